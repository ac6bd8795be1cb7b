// Package pool shares HBONE connections between proxied connections: one
// TLS connection per (source identity and address, destination identity,
// destination address) carries many HTTP/2 CONNECT streams up to a limit, concurrent
// dials for the same key are made once, and idle connections are closed.
package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
)

// Key names the connections that may be shared. Besides the identities and
// the peer address it holds the source workload's address, as Istio's
// ztunnel does: the peer sees the connection's source address, and
// policies may match on it, so two workloads sharing an identity do not
// share a connection.
type Key struct {
	Source      identity.Identity
	SourceAddr  netip.Addr
	Destination identity.Identity
	// Addr is the peer's tunnel address (ip:15008).
	Addr netip.AddrPort
}

func (k Key) String() string {
	return fmt.Sprintf("%s(%s)->%s@%s", k.Source, k.SourceAddr, k.Destination, k.Addr)
}

// Defaults.
const (
	DefaultMaxStreams  = 100
	DefaultIdleTimeout = 30 * time.Second
)

// Pool is a set of HBONE connections. The zero value is not usable: set
// Dial.
type Pool struct {
	// Dial opens a new connection for key.
	Dial func(ctx context.Context, key Key) (*hbone.ClientConn, error)
	// MaxStreams caps the streams one connection carries; 0 means
	// DefaultMaxStreams.
	MaxStreams int
	// IdleTimeout closes a connection that has carried no stream for that
	// long; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Current, if set, reports whether a connection may carry new
	// streams; nil means always. ztunnel answers whether the connection
	// presented its source's current certificate: after a rotation new
	// streams go to a new connection with the new certificate, while the
	// streams open on the old one run on until they end.
	Current func(key Key, cc *hbone.ClientConn) bool

	mu      sync.Mutex
	conns   map[Key][]*entry
	dialing map[Key]*dial
	closed  bool
	// onIdleClose, if set, runs after an idle connection is closed.
	onIdleClose func(Key)
}

type entry struct {
	key     Key
	cc      *hbone.ClientConn
	streams int
	idle    *time.Timer
}

type dial struct {
	done chan struct{}
	err  error
}

// ErrClosed is returned once the pool is closed.
var ErrClosed = errors.New("pool closed")

func (p *Pool) maxStreams() int {
	if p.MaxStreams > 0 {
		return p.MaxStreams
	}
	return DefaultMaxStreams
}

func (p *Pool) idleTimeout() time.Duration {
	if p.IdleTimeout > 0 {
		return p.IdleTimeout
	}
	return DefaultIdleTimeout
}

// Connect opens a CONNECT stream to target over a pooled connection for
// key, dialing one if none has room.
func (p *Pool) Connect(ctx context.Context, key Key, target netip.AddrPort, header http.Header) (net.Conn, error) {
	retried := false
	// refusedBy is the connection that refused the stream, passed over
	// by the one retry.
	var refusedBy *entry
	for {
		e, wait, err := p.take(key, refusedBy)
		if err != nil {
			return nil, err
		}
		if wait != nil {
			select {
			case <-wait.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("wait for hbone connection %s: %w", key, ctx.Err())
			}
			if wait.err != nil {
				return nil, wait.err
			}
			continue
		}
		if e == nil {
			if err := p.dial(ctx, key); err != nil {
				return nil, err
			}
			continue
		}
		c, err := e.cc.Connect(ctx, target, header)
		if err != nil {
			p.release(e)
			retry := false
			switch {
			case hbone.StatusCode(err) != 0:
			case e.cc.Err() != nil:
				// The connection died under us (peer restart): drop it
				// and try once more on a fresh one.
				p.remove(e)
				retry = true
			case errors.Is(err, hbone.ErrRefusedStream):
				// The peer did not take the stream (GOAWAY: the
				// connection takes no more and ends with its streams;
				// REFUSED_STREAM: it is at a limit of its own): once
				// more, on another connection or a new one.
				retry, refusedBy = true, e
			}
			if retry && !retried && ctx.Err() == nil {
				retried = true
				continue
			}
			return nil, err
		}
		return &stream{Conn: c, release: func() { p.release(e) }}, nil
	}
}

// take reserves a stream on a connection with room other than avoid, or
// returns the dial to wait for, or neither when the caller must dial.
func (p *Pool) take(key Key, avoid *entry) (*entry, *dial, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, ErrClosed
	}
	live := p.conns[key][:0]
	var found *entry
	for _, e := range p.conns[key] {
		if e.cc.Err() != nil {
			e.cc.Close()
			continue
		}
		current := p.Current == nil || p.Current(key, e.cc)
		if !current && e.streams == 0 {
			if e.idle != nil {
				e.idle.Stop()
			}
			e.cc.Close()
			continue
		}
		live = append(live, e)
		if found == nil && current && e != avoid && e.streams < p.maxStreams() && e.cc.Available() > 0 {
			found = e
		}
	}
	if p.conns == nil {
		p.conns = map[Key][]*entry{}
		p.dialing = map[Key]*dial{}
	}
	p.conns[key] = live
	if found != nil {
		found.streams++
		if found.idle != nil {
			found.idle.Stop()
			found.idle = nil
		}
		return found, nil, nil
	}
	if d, ok := p.dialing[key]; ok {
		return nil, d, nil
	}
	return nil, nil, nil
}

// dial opens a connection for key unless another caller is already
// dialing it, in which case it waits for that one.
func (p *Pool) dial(ctx context.Context, key Key) error {
	p.mu.Lock()
	if d, ok := p.dialing[key]; ok {
		p.mu.Unlock()
		select {
		case <-d.done:
			return d.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	d := &dial{done: make(chan struct{})}
	p.dialing[key] = d
	p.mu.Unlock()

	cc, err := p.Dial(ctx, key)

	p.mu.Lock()
	delete(p.dialing, key)
	if err == nil && p.closed {
		cc.Close()
		err = ErrClosed
	}
	if err == nil {
		e := &entry{key: key, cc: cc}
		p.conns[key] = append(p.conns[key], e)
		p.armIdle(e)
	}
	d.err = err
	close(d.done)
	p.mu.Unlock()
	return err
}

// armIdle starts e's idle timer; p.mu must be held.
func (p *Pool) armIdle(e *entry) {
	if e.streams > 0 || e.idle != nil {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(p.idleTimeout(), func() {
		p.mu.Lock()
		if e.idle != t || e.streams > 0 {
			p.mu.Unlock()
			return
		}
		hook := p.onIdleClose
		p.mu.Unlock()
		p.remove(e)
		if hook != nil {
			hook(e.key)
		}
	})
	e.idle = t
}

func (p *Pool) release(e *entry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.streams--
	p.armIdle(e)
}

func (p *Pool) remove(e *entry) {
	p.mu.Lock()
	list := p.conns[e.key]
	for i, x := range list {
		if x == e {
			p.conns[e.key] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(p.conns[e.key]) == 0 {
		delete(p.conns, e.key)
	}
	p.mu.Unlock()
	e.cc.Close()
}

// Conns is the number of open connections per key.
func (p *Pool) Conns() map[Key]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[Key]int{}
	for k, list := range p.conns {
		out[k] = len(list)
	}
	return out
}

// Close closes every connection; later Connects fail with ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var all []*entry
	for _, list := range p.conns {
		all = append(all, list...)
	}
	p.conns = nil
	p.mu.Unlock()
	for _, e := range all {
		e.cc.Close()
	}
	return nil
}

// stream returns its slot to the pool when closed.
type stream struct {
	net.Conn
	once    sync.Once
	release func()
}

func (s *stream) Close() error {
	err := s.Conn.Close()
	s.once.Do(s.release)
	return err
}

// WriteTo hands the stream's data to w as the tunnel stream does it
// (hbone's copy loops use it), or copies it.
func (s *stream) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := s.Conn.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, struct{ io.Reader }{s.Conn})
}

// CloseWrite half-closes the stream.
func (s *stream) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return s.Close()
}
