package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"time"
)

// sniffConn is a downstream connection read through a buffer, so that
// the http_inspector can look at its first bytes and the chain then
// reads them again.
type sniffConn struct {
	net.Conn
	br      *bufio.Reader
	sniffed bool
	proto   string
	// pending is the sniff still waiting for bytes after its timeout:
	// reads wait for it, so that the buffer has one reader at a time.
	pending chan struct{}
	// answered says the HTTP/1 connection manager's last response went
	// out whole and closes the connection (halfClose).
	answered bool
}

// readBufferSize is the read buffer a downstream connection starts
// with: the sniff's first line (detect's limit) and most request heads.
// A head that does not fit grows it once, to the connection manager's
// max_request_headers_kb (grow). It was 100 KiB for every connection,
// 1.6 MB of the waypoint's 6.6 MB live heap with 16 connections open.
const readBufferSize = 8 << 10

func newSniffConn(c net.Conn) *sniffConn {
	return &sniffConn{Conn: c, br: bufio.NewReaderSize(c, readBufferSize)}
}

// grow gives the connection a read buffer of at least size bytes,
// holding what the old one held.
func (s *sniffConn) grow(size int) {
	if s.br.Size() >= size {
		return
	}
	held, _ := s.br.Peek(s.br.Buffered())
	s.br = bufio.NewReaderSize(&prefixed{held: bytes.Clone(held), r: s.Conn}, size)
}

// prefixed reads held, then r.
type prefixed struct {
	held []byte
	r    io.Reader
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.held) > 0 {
		n := copy(b, p.held)
		p.held = p.held[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// WriteTo keeps r's own copy (splice between TCP sockets) for what
// follows held.
func (p *prefixed) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if len(p.held) > 0 {
		m, err := w.Write(p.held)
		n, p.held = int64(m), p.held[m:]
		if err != nil {
			return n, err
		}
	}
	m, err := io.Copy(w, p.r)
	return n + m, err
}

func (s *sniffConn) wait() {
	if s.pending != nil {
		<-s.pending
		s.pending = nil
	}
}

func (s *sniffConn) Read(p []byte) (int, error) {
	s.wait()
	return s.br.Read(p)
}

// WriteTo lets copies skip the buffer once it is drained.
func (s *sniffConn) WriteTo(w io.Writer) (int64, error) {
	s.wait()
	return s.br.WriteTo(w)
}

// sniffWithin is sniff bounded by d (0: unbounded): timedOut when the
// client sent nothing decisive in time (a server-first protocol).
func (s *sniffConn) sniffWithin(d time.Duration) (proto string, timedOut bool) {
	if s.sniffed || d <= 0 {
		return s.sniff(), false
	}
	done := make(chan struct{})
	var got string
	go func() {
		defer close(done)
		got = detect(s.br)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	s.sniffed = true
	select {
	case <-done:
		s.proto = got
		return got, false
	case <-t.C:
		s.pending = done
		return "", true
	}
}

// sniff is Envoy's http_inspector: "h2c" for the HTTP/2 preface,
// "http/1.1" or "http/1.0" for an HTTP/1 request line, "" otherwise. It
// waits for the first line (up to 8 KiB) or the first byte that cannot
// belong to one.
func (s *sniffConn) sniff() string {
	if !s.sniffed {
		s.sniffed, s.proto = true, detect(s.br)
	}
	return s.proto
}

// detect reads the protocol off the buffer's first bytes.
func detect(br *bufio.Reader) string {
	const limit = 8 << 10
	for n := 1; n <= limit; n++ {
		b, _ := br.Peek(n)
		if len(b) < n {
			return "" // closed before a whole line
		}
		if bytes.HasPrefix([]byte("PRI * HTTP/2.0\r\n"), b) {
			if n == len("PRI * HTTP/2.0\r\n") {
				return "h2c"
			}
			continue
		}
		c := b[n-1]
		if c == '\n' {
			return requestLineProto(bytes.TrimRight(b, "\r\n"))
		}
		if c < 0x20 && c != '\r' && c != '\t' || c == 0x7f {
			return "" // binary: not HTTP
		}
	}
	return ""
}

// requestLineProto reads "METHOD SP target SP HTTP/1.x".
func requestLineProto(line []byte) string {
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 || len(parts[0]) == 0 {
		return ""
	}
	for _, c := range parts[0] {
		if c < 'A' || c > 'Z' {
			if c != '-' && c != '_' {
				return ""
			}
		}
	}
	switch string(parts[2]) {
	case "HTTP/1.1":
		return "http/1.1"
	case "HTTP/1.0":
		return "http/1.0"
	}
	return ""
}
