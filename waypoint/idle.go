package waypoint

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// idleConn notes when a connection last moved bytes, for a tcp_proxy's
// idle_timeout. It keeps what hbone.Join relies on: CloseWrite, and a
// tunnel stream's WriteTo.
type idleConn struct {
	net.Conn
	last *atomic.Int64
}

func (c *idleConn) touch() { c.last.Store(time.Now().UnixNano()) }

func (c *idleConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *idleConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *idleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// WriteTo keeps a stream's own WriteTo, counting activity on the way.
func (c *idleConn) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := c.Conn.(io.WriterTo); ok {
		return wt.WriteTo(&touchWriter{w: w, c: c})
	}
	return io.Copy(w, struct{ io.Reader }{c})
}

type touchWriter struct {
	w io.Writer
	c *idleConn
}

func (t *touchWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if n > 0 {
		t.c.touch()
	}
	return n, err
}

// withIdleTimeout wraps a and b so that both are closed once neither has
// moved a byte for d; stop ends the watch.
func withIdleTimeout(a, b net.Conn, d time.Duration) (net.Conn, net.Conn, func()) {
	if d <= 0 {
		return a, b, func() {}
	}
	last := &atomic.Int64{}
	last.Store(time.Now().UnixNano())
	var stopped atomic.Bool
	var timer atomic.Pointer[time.Timer]
	var check func()
	check = func() {
		if stopped.Load() {
			return
		}
		idle := time.Since(time.Unix(0, last.Load()))
		if idle >= d {
			a.Close()
			b.Close()
			return
		}
		timer.Store(time.AfterFunc(d-idle, check))
	}
	timer.Store(time.AfterFunc(d, check))
	stop := func() {
		stopped.Store(true)
		timer.Load().Stop()
	}
	return &idleConn{Conn: a, last: last}, &idleConn{Conn: b, last: last}, stop
}
