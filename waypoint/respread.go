package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
)

// The waypoint's own HTTP/1.x response head parser, for the answers of
// its HTTP/1 upstreams (h1client.go). What it takes, it reads into the
// Response http.ReadResponse makes of it (status, canonical header
// names, the framing of the body, Close, trailers, and the same bytes
// left on the connection); what ReadResponse refuses, it refuses
// (FuzzResponseHead holds it to both). What it leaves out is the
// garbage (docs/performance.md, "The waypoint's own HTTP/1 response
// head"): ReadResponse makes a string of the status line, of each value
// and of each uncommon name, a transferReader and a body; here the
// status text, names and values of a head are copied into one string,
// the values cut from one slice, and the Response and its body's
// framing are part of the caller's h1Body. The head's end is found, its
// fields read and its body framed with the codec the request reader
// uses (h1codec.go), under the response side's rules.
//
// It refuses some of what ReadResponse takes: a status code that is not
// three digits ("+99"), a version other than HTTP/1.x, a control
// character in the reason phrase, a field name that is not a token
// (ReadResponse takes a space in one), a folded field line (obs-fold,
// which RFC 9112 section 5.2 lets a proxy refuse), trailers not in
// CRLF lines, and Transfer-Encoding on an HTTP/1.0 response, which
// ReadResponse ignores (reading the body to the close, or by a
// Content-Length beside it) and RFC 9112 section 6.1 has a client treat
// as faulty framing: the try fails and the connection is not reused.

// respReader reads response heads: one per connection, its scratch
// kept from one response to the next.
type respReader struct {
	// long holds a head longer than the reader's buffer.
	long []byte
}

// maxKeptSlab: a scratch grown larger than this by one large head is
// not kept for the connection's next.
const maxKeptSlab = 16 << 10

// readResponse reads a response head from rd, as http.ReadResponse(rd,
// req) (for tests; h1Conn keeps a respReader and its body's framing).
func readResponse(rd *bufio.Reader, req *http.Request) (*http.Response, error) {
	var p respReader
	resp := new(http.Response)
	if err := p.read(rd, req, resp, new(respBody)); err != nil {
		return nil, err
	}
	return resp, nil
}

// read reads a response head from rd into resp (h1Body holds both, so
// that a response costs one allocation less); body is set up as its
// body (resp.Body, unless the response has none: http.NoBody).
func (p *respReader) read(rd *bufio.Reader, req *http.Request, resp *http.Response, body *respBody) error {
	defer p.release()
	*resp = http.Response{Request: req}
	var sc headScan
	head, text, long, err := p.waitHead(rd, resp, &sc)
	if err != nil {
		return err
	}
	if !long {
		// (head is rd's buffer, left as it is until rd is read again.)
		defer rd.Discard(len(head))
	}
	// The status text, the names commonKey does not know and the values
	// in one string; the values' slices in one slice, one more for a
	// Transfer-Encoding.
	// (At most the text and the field lines less their colons and line
	// ends, the empty line's and the start line's: a fold's space takes
	// the place of a line end.)
	var s strings.Builder
	s.Grow(text[1] - text[0] + len(head) - sc.first - 2*sc.fields - 1)
	s.Write(head[text[0]:text[1]])
	statusEnd := s.Len()
	vals := make([]string, sc.fields+1)
	h := make(http.Header, sc.fields)
	var hf headFields
	if _, err := readFields(&s, head[sc.first:], h, vals[:sc.fields], 0, &hf, responseHeadFields); err != nil {
		return err
	}
	resp.Status = s.String()[:statusEnd]
	resp.Header = h
	pragmaNoCache(h)
	return setFraming(resp, req, body, rd, &hf, vals[sc.fields:])
}

// waitHead waits for a whole response head and returns it: a view of
// rd's buffer (to be discarded once read) or, for a head longer than the
// buffer, a copy in p.long, already read off rd (long). Its status line
// is parsed into resp as soon as it is in, so that an upstream that
// does not answer in HTTP is told at once; text is where its status
// text is in the head.
func (p *respReader) waitHead(rd *bufio.Reader, resp *http.Response, sc *headScan) (head []byte, text [2]int, long bool, err error) {
	checked := false
	b, _ := rd.Peek(rd.Buffered())
	for {
		n, ok := sc.scan(b)
		if !checked && sc.lines > 0 {
			line := dropCR(b[:sc.first-1])
			from, err := parseStatusLine(line, resp)
			if err != nil {
				return nil, text, long, err
			}
			text, checked = [2]int{from, len(line)}, true
		}
		if ok {
			return b[:n], text, long, nil
		}
		if !long {
			_, err := rd.Peek(len(b) + 1)
			if err == nil {
				b, _ = rd.Peek(rd.Buffered())
				continue
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				return nil, text, long, unexpectedEOF(err)
			}
			// Longer than the buffer: copied out, then read a line at a
			// time, so that nothing after the head is read off.
			p.long = append(p.long[:0], b...)
			rd.Discard(len(b))
			long = true
		}
		line, err := rd.ReadSlice('\n')
		p.long = append(p.long, line...)
		if err != nil && err != bufio.ErrBufferFull {
			return nil, text, long, unexpectedEOF(err)
		}
		b = p.long
	}
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseStatusLine parses "HTTP/1.1 200 OK" into resp's version and
// status code, and returns where its status text ("200 OK") starts.
func parseStatusLine(line []byte, resp *http.Response) (text int, err error) {
	proto, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return 0, fmt.Errorf("malformed HTTP response %q", clip(line))
	}
	rest = bytes.TrimLeft(rest, " ")
	code, _, _ := bytes.Cut(rest, []byte{' '})
	if len(code) != 3 || !asciiDigit(code[0]) || !asciiDigit(code[1]) || !asciiDigit(code[2]) {
		return 0, fmt.Errorf("malformed HTTP status code %q", clip(code))
	}
	resp.StatusCode = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	switch {
	case string(proto) == "HTTP/1.1":
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	case string(proto) == "HTTP/1.0":
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.0", 1, 0
	case len(proto) == 8 && string(proto[:7]) == "HTTP/1." && asciiDigit(proto[7]):
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = string(proto), 1, int(proto[7]-'0')
	default:
		return 0, fmt.Errorf("malformed HTTP version %q", clip(proto))
	}
	for _, c := range rest {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 0, fmt.Errorf("malformed HTTP status %q", clip(rest))
		}
	}
	return len(line) - len(rest), nil
}

// setFraming reads the body's framing from resp's header, as net/http's
// readTransfer: Transfer-Encoding (chunked, the only one; refused in
// HTTP/1.0: chunkedEncoding), Content-Length (repeated only with one value), no body for
// HEAD, 1xx, 204 and 304, else to the close; Connection: close (and
// HTTP/1.0 without keep-alive); the announced trailers. te is a slice
// of one for resp.TransferEncoding.
func setFraming(resp *http.Response, req *http.Request, body *respBody, rd *bufio.Reader, hf *headFields, te []string) error {
	h := resp.Header
	head := req != nil && req.Method == http.MethodHead
	closing := shouldClose(resp.ProtoMajor, resp.ProtoMinor, h, true)
	chunked, err := chunkedEncoding(hf, resp.ProtoMajor, resp.ProtoMinor)
	if err != nil {
		return err
	}
	declared, err := contentLength(h)
	if err != nil {
		return err
	}
	noBody := !statusHasBody(resp.StatusCode)
	var length int64 // the body's: -1 unknown
	switch {
	case head || noBody:
		length = 0
	case chunked:
		delete(h, "Content-Length")
		length = -1
	default:
		length = declared
	}
	resp.ContentLength = length
	if head {
		resp.ContentLength = declared
	}
	if tv, ok := h["Trailer"]; ok && chunked {
		delete(h, "Trailer")
		t, err := declaredTrailers(tv)
		if err != nil {
			return err
		}
		resp.Trailer = t
	}
	if length == -1 && !chunked && !noBody {
		closing = true // the close ends the body
	}
	resp.Close = closing
	if chunked {
		te[0] = "chunked"
		resp.TransferEncoding = te
	}

	*body = respBody{rd: rd, trailer: &resp.Trailer, rules: responseTrailerFields, closing: closing}
	switch {
	case chunked && (head || noBody), length == 0:
		resp.Body = http.NoBody
		return nil
	case chunked:
		body.mode, body.chunks = bodyChunked, httputil.NewChunkedReader(rd)
	case length > 0:
		body.mode, body.left = bodyLength, length
	default:
		body.mode = bodyToClose
	}
	resp.Body = body
	return nil
}

// release drops a scratch grown too large by one head.
func (p *respReader) release() {
	if cap(p.long) > maxKeptSlab {
		p.long = nil
	}
}
