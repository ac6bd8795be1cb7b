package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
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
// framing are part of the caller's h1Body.
//
// It refuses some of what ReadResponse takes: a status code that is not
// three digits ("+99"), a version other than HTTP/1.x, a control
// character in the reason phrase, a field name that is not a token
// (ReadResponse takes a space in one), a folded field line (obs-fold,
// which RFC 9112 section 5.2 lets a proxy refuse), and trailers not in
// CRLF lines.

// respReader reads response heads: one per connection, its scratch
// kept from one response to the next.
type respReader struct {
	// slab holds the head's status text, names and values while it is
	// read; fields index it.
	slab   []byte
	fields []respField
	// long holds a line longer than the reader's buffer.
	long []byte
}

// respField is a header field in slab: its name slab[k0:k1], its
// value slab[v0:v1].
type respField struct{ k0, k1, v0, v1 int }

// maxKeptSlab: a scratch grown larger than this by one large head is
// not kept for the connection's next.
const maxKeptSlab = 16 << 10

// Errors of a malformed response, in net/http's words.
var (
	errRespTrailerEOF = errors.New("unexpected EOF reading trailer")
	errRespFold       = errors.New("malformed MIME header: folded line (obs-fold)")
)

// respBody is a response body's framing, read from the connection's
// reader: a length, chunks and trailers, or everything to the close.
type respBody struct {
	rd   *bufio.Reader
	mode bodyMode
	// left: what a body of known length still has to come.
	left int64
	// cr reads the chunks; resp gets the trailers after them, p parses
	// them.
	cr   io.Reader
	resp *http.Response
	p    *respReader
	err  error
}

type bodyMode uint8

const (
	bodyLength bodyMode = iota
	bodyChunked
	bodyToClose
)

func (b *respBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	var n int
	var err error
	switch b.mode {
	case bodyLength:
		if b.left == 0 {
			b.err = io.EOF
			return 0, io.EOF
		}
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err = b.rd.Read(p)
		b.left -= int64(n)
		switch {
		case b.left == 0:
			err = io.EOF
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
	case bodyChunked:
		n, err = b.cr.Read(p)
		if err == io.EOF {
			if terr := b.readTrailer(); terr != nil {
				err = terr
			}
		}
	default:
		n, err = b.rd.Read(p)
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

// Close: whether the connection can carry more is its owner's to
// decide (h1Body).
func (b *respBody) Close() error { return nil }

// readTrailer reads the trailer section after the last chunk into
// resp.Trailer, as net/http merges it: lines ending in CRLF, the
// section no longer than the reader's buffer (net/http's bound).
func (b *respBody) readTrailer() error {
	buf, _ := b.rd.Peek(2)
	if len(buf) == 2 && buf[0] == '\r' && buf[1] == '\n' {
		b.rd.Discard(2)
		return nil
	}
	if len(buf) < 2 {
		return errRespTrailerEOF
	}
	p := b.p
	p.slab, p.fields = p.slab[:0], p.fields[:0]
	if err := p.readFields(b.rd, true, b.rd.Size()); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = errRespTrailerEOF
		}
		return err
	}
	t, _, _ := p.header(false)
	p.release()
	if b.resp.Trailer == nil {
		b.resp.Trailer = t
		return nil
	}
	for k, vs := range t {
		b.resp.Trailer[k] = vs
	}
	return nil
}

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
	p.slab, p.fields = p.slab[:0], p.fields[:0]
	defer p.release()
	line, err := p.readLine(rd, false, -1)
	if err != nil {
		return err
	}
	*resp = http.Response{Request: req}
	proto, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return fmt.Errorf("malformed HTTP response %q", clip(line))
	}
	rest = bytes.TrimLeft(rest, " ")
	code, _, _ := bytes.Cut(rest, []byte{' '})
	if len(code) != 3 || !asciiDigit(code[0]) || !asciiDigit(code[1]) || !asciiDigit(code[2]) {
		return fmt.Errorf("malformed HTTP status code %q", clip(code))
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
		return fmt.Errorf("malformed HTTP version %q", clip(proto))
	}
	for _, c := range rest {
		if c < ' ' && c != '\t' || c == 0x7f {
			return fmt.Errorf("malformed HTTP status %q", clip(rest))
		}
	}
	p.slab = append(p.slab, rest...)
	statusEnd := len(p.slab)
	if err := p.readFields(rd, false, -1); err != nil {
		return err
	}
	h, s, te := p.header(true)
	resp.Status = s[:statusEnd]
	resp.Header = h
	if pr := h["Pragma"]; len(pr) > 0 && pr[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	if err := setFraming(resp, req, body, rd, p, te); err != nil {
		return err
	}
	return nil
}

// setFraming reads the body's framing from resp's header, as net/http's
// readTransfer: Transfer-Encoding (chunked, the only one; ignored in
// HTTP/1.0), Content-Length (repeated only with one value), no body for
// HEAD, 1xx, 204 and 304, else to the close; Connection: close (and
// HTTP/1.0 without keep-alive); the announced trailers.
func setFraming(resp *http.Response, req *http.Request, body *respBody, rd *bufio.Reader, p *respReader, te []string) error {
	h := resp.Header
	head := req != nil && req.Method == http.MethodHead
	conn := h["Connection"]
	closing := httpguts.HeaderValuesContainsToken(conn, "close")
	if resp.ProtoMinor == 0 {
		closing = closing || !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	} else if closing {
		delete(h, "Connection")
	}

	chunked := false
	if enc, ok := h["Transfer-Encoding"]; ok {
		delete(h, "Transfer-Encoding")
		if resp.ProtoMinor >= 1 {
			if len(enc) != 1 {
				return fmt.Errorf("too many transfer encodings: %q", enc)
			}
			if !asciiEqualFold(enc[0], "chunked") {
				return fmt.Errorf("unsupported transfer encoding: %q", enc[0])
			}
			chunked = true
		}
	}

	lens := h["Content-Length"]
	if len(lens) > 1 {
		first := trimOWSCRLF(lens[0])
		for _, l := range lens[1:] {
			if trimOWSCRLF(l) != first {
				return fmt.Errorf("http: message cannot contain multiple Content-Length headers; got %q", lens)
			}
		}
		lens = []string{first}
		h["Content-Length"] = lens
	}
	declared := int64(-1)
	if len(lens) > 0 {
		n, err := parseRespContentLength(lens[0])
		if err != nil {
			return err
		}
		declared = n
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
		var err error
		for _, v := range tv {
			forEachListElement(v, func(k string) {
				k = http.CanonicalHeaderKey(k)
				switch k {
				case "Transfer-Encoding", "Trailer", "Content-Length":
					if err == nil {
						err = fmt.Errorf("bad trailer key %q", k)
					}
					return
				}
				if resp.Trailer == nil {
					resp.Trailer = http.Header{}
				}
				resp.Trailer[k] = nil
			})
		}
		if err != nil {
			return err
		}
	}
	if length == -1 && !chunked && !noBody {
		closing = true // the close ends the body
	}
	resp.Close = closing
	if chunked {
		te[0] = "chunked"
		resp.TransferEncoding = te
	}

	*body = respBody{rd: rd}
	switch {
	case chunked && (head || noBody), length == 0:
		resp.Body = http.NoBody
		return nil
	case chunked:
		body.mode, body.cr, body.resp, body.p = bodyChunked, httputil.NewChunkedReader(rd), resp, p
	case length > 0:
		body.mode, body.left = bodyLength, length
	default:
		body.mode = bodyToClose
	}
	resp.Body = body
	return nil
}

// parseRespContentLength is net/http's parseContentLength: a number of
// up to 63 bits, spaces around it.
func parseRespContentLength(v string) (int64, error) {
	v = trimOWSCRLF(v)
	if v == "" {
		return 0, errors.New("invalid empty Content-Length")
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		return 0, fmt.Errorf("bad Content-Length %q", v)
	}
	return int64(n), nil
}

// forEachListElement calls fn with each element of a comma-separated list,
// trimmed, empty ones left out (net/http's foreachHeaderElement).
func forEachListElement(v string, fn func(string)) {
	for f := range strings.SplitSeq(v, ",") {
		if f = trimOWSCRLF(f); f != "" {
			fn(f)
		}
	}
}

func trimOWSCRLF(s string) string {
	for len(s) > 0 && isOWSCRLF(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isOWSCRLF(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// readFields reads header fields up to the empty line that ends them,
// into slab and fields. crlf: each line must end in CRLF (trailers);
// limit >= 0 bounds the bytes read.
func (p *respReader) readFields(rd *bufio.Reader, crlf bool, limit int) error {
	for {
		line, err := p.readLine(rd, crlf, limit)
		if err != nil {
			return err
		}
		if limit >= 0 {
			limit -= len(line) + 2
		}
		if len(line) == 0 {
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(p.fields) == 0 {
				return fmt.Errorf("malformed MIME header initial line: %q", clip(line))
			}
			return errRespFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return fmt.Errorf("malformed MIME header: missing colon: %q", clip(line))
		}
		name, v := line[:colon], line[colon+1:]
		if len(name) == 0 {
			return fmt.Errorf("malformed MIME header line: %q", clip(line))
		}
		for _, c := range name {
			if !tcharByte(c) {
				return fmt.Errorf("malformed MIME header line: %q", clip(line))
			}
		}
		for _, c := range v {
			if c < ' ' && c != '\t' || c == 0x7f {
				return fmt.Errorf("malformed MIME header line: %q", clip(line))
			}
		}
		for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
			v = v[1:]
		}
		for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
			v = v[:len(v)-1]
		}
		f := respField{k0: len(p.slab)}
		p.slab = append(p.slab, name...)
		f.k1 = len(p.slab)
		upper := true
		for i, c := range p.slab[f.k0:f.k1] {
			if upper && 'a' <= c && c <= 'z' {
				p.slab[f.k0+i] = c - ('a' - 'A')
			} else if !upper && 'A' <= c && c <= 'Z' {
				p.slab[f.k0+i] = c + ('a' - 'A')
			}
			upper = c == '-'
		}
		p.slab = append(p.slab, v...)
		f.v0, f.v1 = f.k1, len(p.slab)
		p.fields = append(p.fields, f)
	}
}

// readLine reads a line, without its LF or CRLF (crlf: it must end in
// CRLF); limit >= 0 bounds its length.
func (p *respReader) readLine(rd *bufio.Reader, crlf bool, limit int) ([]byte, error) {
	line, err := rd.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		p.long = append(p.long[:0], line...)
		for err == bufio.ErrBufferFull {
			if limit >= 0 && len(p.long) > limit {
				return nil, errTrailerSize(rd)
			}
			line, err = rd.ReadSlice('\n')
			p.long = append(p.long, line...)
		}
		line = p.long
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	n := len(line)
	switch {
	case n > 0 && line[n-1] == '\r':
		line = line[:n-1]
	case crlf:
		return nil, fmt.Errorf("malformed trailer line %q: not ending in CRLF", clip(line))
	}
	if limit >= 0 && len(line)+2 > limit {
		return nil, errTrailerSize(rd)
	}
	return line, nil
}

func errTrailerSize(rd *bufio.Reader) error {
	return fmt.Errorf("trailers longer than %d bytes", rd.Size())
}

// header makes the fields read a header: their names and values
// substrings of one string (also returned, for the status text before
// them), the values cut from one slice; withTE: one more element cut
// from it, for a Transfer-Encoding.
func (p *respReader) header(withTE bool) (h http.Header, s string, te []string) {
	s = string(p.slab)
	n := len(p.fields)
	if withTE {
		n++
	}
	vals := make([]string, n)
	h = make(http.Header, len(p.fields))
	for i, f := range p.fields {
		k, v := s[f.k0:f.k1], s[f.v0:f.v1]
		if vv, ok := h[k]; ok {
			h[k] = append(vv, v)
			continue
		}
		vals[i] = v
		h[k] = vals[i : i+1 : i+1]
	}
	if withTE {
		te = vals[n-1 : n : n]
	}
	return h, s, te
}

// release drops a scratch grown too large by one head.
func (p *respReader) release() {
	if cap(p.slab) > maxKeptSlab {
		p.slab = nil
	}
	if cap(p.long) > maxKeptSlab {
		p.long = nil
	}
	if cap(p.fields) > 256 {
		p.fields = nil
	}
}

func asciiDigit(c byte) bool { return '0' <= c && c <= '9' }

// tcharByte: c may be in a field name (RFC 9110 tchar).
func tcharByte(c byte) bool { return tchars[c] }

var tchars = func() (t [256]bool) {
	for c := range 0x80 {
		t[c] = httpguts.IsTokenRune(rune(c))
	}
	return t
}()

// clip is at most the first 80 bytes of b, for an error.
func clip(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}
