package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net"
)

// sniffConn is a downstream connection read through a buffer, so that
// the http_inspector can look at its first bytes and the chain then
// reads them again.
type sniffConn struct {
	net.Conn
	br      *bufio.Reader
	sniffed bool
	proto   string
}

// readBufferSize holds a whole request head at the largest limit
// (max_request_headers_kb up to 96 KiB in practice) plus slack.
const readBufferSize = 100 << 10

func newSniffConn(c net.Conn) *sniffConn {
	return &sniffConn{Conn: c, br: bufio.NewReaderSize(c, readBufferSize)}
}

func (s *sniffConn) Read(p []byte) (int, error) { return s.br.Read(p) }

// WriteTo lets copies skip the buffer once it is drained.
func (s *sniffConn) WriteTo(w io.Writer) (int64, error) { return s.br.WriteTo(w) }

// sniff is Envoy's http_inspector: "h2c" for the HTTP/2 preface,
// "http/1.1" or "http/1.0" for an HTTP/1 request line, "" otherwise. It
// waits for the first line (up to 8 KiB) or the first byte that cannot
// belong to one.
func (s *sniffConn) sniff() string {
	if s.sniffed {
		return s.proto
	}
	s.sniffed = true
	const limit = 8 << 10
	for n := 1; n <= limit; n++ {
		b, _ := s.br.Peek(n)
		if len(b) < n {
			return "" // closed before a whole line
		}
		if bytes.HasPrefix([]byte("PRI * HTTP/2.0\r\n"), b) {
			if n == len("PRI * HTTP/2.0\r\n") {
				s.proto = "h2c"
				return s.proto
			}
			continue
		}
		c := b[n-1]
		if c == '\n' {
			line := bytes.TrimRight(b, "\r\n")
			s.proto = requestLineProto(line)
			return s.proto
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
