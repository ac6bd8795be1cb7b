package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1 codec both sides of the waypoint share: the request reader
// (reqread.go, downstream) and the response reader (respread.go,
// upstream) find a head's end with one headScan, read its fields with
// one readFields, work out the body's framing with the same pieces
// (contentLength, chunkedEncoding, declaredTrailers, shouldClose) and
// read the body, its chunks and its trailer section with one msgBody.
//
// The two sides are not equally lenient, on purpose. A request is read
// as net/http's http.ReadRequest reads it (readRequest's doc: it is
// pinned to it field by field) where Envoy does not refuse more; an
// upstream's response as http.ReadResponse reads it, less what a proxy
// may refuse from a server. Where they differ:
//   - field lines (fieldRules, the values below): bare LF line ends and
//     obs-fold are taken in a request's head and trailers, as textproto
//     takes them; a response's folded line is refused (RFC 9112 section
//     5.2), and its trailer lines must end in CRLF;
//   - Host: a request's goes apart (req.Host), a response's is a header
//     like another (hostApart);
//   - Content-Length with Transfer-Encoding: a request is refused (400,
//     as Envoy), a response's length dropped as net/http drops it
//     (parseHead, setFraming);
//   - "Connection: close": dropped from an HTTP/1.1 response's header,
//     kept in a request's, as net/http does (shouldClose's removeClose);
//   - bounds: a request's head within max_request_headers_kb and
//     max_headers_count (readRequest), a response's within the
//     connection's maxResponseHead (h1Conn); either's trailer section
//     within the read buffer, as net/http bounds it (msgBody);
//   - refusals: a request's are answered with the status Envoy gives
//     (errHead), a response's fail the try.
// Everything else is one code for both: the field grammar, keys made
// canonical, values trimmed and checked, Content-Length (repeated only
// with one number), Transfer-Encoding (one "chunked", HTTP/1.1 and
// later), declared trailers, Pragma, the body and its chunks.

// fieldRules are what a field section may hold beyond RFC 9112's
// field-line grammar (name ":" OWS value OWS CRLF).
type fieldRules struct {
	// bareLF: a line may end in a bare LF, as textproto reads lines;
	// else it must end in CRLF.
	bareLF bool
	// fold: a line that starts with a space or a tab continues the field
	// before it (obs-fold), trimmed and joined to it with one space, as
	// textproto reads it; else the section is refused.
	fold bool
	// hostApart: the Host field goes into headFields rather than into
	// the header (a request's head: net/http keeps it in req.Host).
	hostApart bool
}

var (
	// requestHeadFields and requestTrailerFields are textproto's, as
	// http.ReadRequest reads a request's head and trailers.
	requestHeadFields    = fieldRules{bareLF: true, fold: true, hostApart: true}
	requestTrailerFields = fieldRules{bareLF: true, fold: true}
	// responseHeadFields: as http.ReadResponse, but obs-fold refused.
	responseHeadFields = fieldRules{bareLF: true}
	// responseTrailerFields: CRLF lines only, and no obs-fold.
	responseTrailerFields = fieldRules{}
)

// errStricter marks what is refused here that net/http would take
// (readRequest's doc: Envoy refuses it).
var errStricter = errors.New("refused as Envoy does")

// errFold: a folded field line where fieldRules refuse one.
var errFold = errors.New("folded line (obs-fold)")

// headScan finds where a head (a start line, field lines, the empty
// line that ends them) ends in bytes that arrive a piece at a time, and
// counts its fields on the way. Each scan is given the head so far,
// from its first byte.
type headScan struct {
	off    int // where the first line not looked at starts
	lines  int // lines looked at
	first  int // the length of the start line, its line end included
	fields int // field lines that do not continue the one before
	hosts  int // of them, Host fields
}

// scan looks at the whole lines of b not looked at yet; it returns the
// head's length, line ends included, once b holds its empty line (CRLF
// or a bare LF: the field reader's rules judge the line ends).
func (s *headScan) scan(b []byte) (n int, ok bool) {
	for {
		i := bytes.IndexByte(b[s.off:], '\n')
		if i < 0 {
			return 0, false
		}
		line := b[s.off : s.off+i]
		s.off += i + 1
		if s.lines == 0 {
			s.first = s.off
		} else {
			if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
				return s.off, true
			}
			if line[0] != ' ' && line[0] != '\t' {
				s.fields++
				if len(line) > 4 && line[4] == ':' && line[0]|0x20 == 'h' && line[1]|0x20 == 'o' && line[2]|0x20 == 's' && line[3]|0x20 == 't' {
					s.hosts++
				}
			}
		}
		s.lines++
	}
}

// headFields is what a head's fields say that does not go into its
// header: Transfer-Encoding (the framing, which net/http keeps apart)
// and, under hostApart, Host.
type headFields struct {
	hosts int
	host  string
	tes   int
	te    string
}

// readFields reads header fields from b, up to and including the empty
// line that ends them (b holds one), as rules say: a key is canonical, a
// value is trimmed of spaces and tabs. Values go into s, as do the keys
// commonKey does not know, and each key's first value into a slice of
// slab, then of one more slab of spare slices. hf, when not nil (a
// head), takes Transfer-Encoding (and Host under hostApart), which do
// not go into h. It returns what follows the empty line.
func readFields(s *strings.Builder, b []byte, h http.Header, slab []string, spare int, hf *headFields, rules fieldRules) ([]byte, error) {
	if len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			i = len(b)
		}
		return nil, fmt.Errorf("malformed MIME header initial line: %q", clip(b[:i]))
	}
	var kb [64]byte // a key, canonical
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, io.ErrUnexpectedEOF // (callers give b an end)
		}
		line := b[:i]
		b = b[i+1:]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		} else if !rules.bareLF {
			return nil, fmt.Errorf("malformed MIME header line %q: not ending in CRLF", clip(line))
		}
		if len(line) == 0 {
			return b, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return nil, fmt.Errorf("malformed MIME header: missing colon: %q", clip(line))
		}
		if colon == 0 {
			return nil, fmt.Errorf("malformed MIME header line: %q: empty name", clip(line))
		}
		// The key, canonical: the first letter and each after a hyphen
		// upper case, the others lower case.
		k := kb[:0]
		upper := true
		for _, c := range line[:colon] {
			if !tokenByte[c] {
				if c == ' ' {
					return nil, fmt.Errorf("malformed MIME header line: %q: space before the colon: %w", clip(line), errStricter)
				}
				return nil, fmt.Errorf("malformed MIME header line: %q: invalid name", clip(line))
			}
			if upper && 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			} else if !upper && 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			k = append(k, c)
			upper = c == '-'
		}
		key := commonKey(k)
		if key == "" {
			start := s.Len()
			s.Write(k)
			key = s.String()[start:]
		}
		// The value: the line's after the colon, then (under fold) each
		// continuation line's, trimmed and joined with one space; leading
		// blanks dropped from the whole (so a folded value that starts
		// empty starts with its first non-empty piece, as textproto has
		// it).
		start := s.Len()
		v := trim(line[colon+1:])
		if !validValue(v) {
			return nil, fmt.Errorf("malformed MIME header line: %q: invalid value", clip(line))
		}
		s.Write(v)
		for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return nil, io.ErrUnexpectedEOF
			}
			cont := b[:i]
			b = b[i+1:]
			if n := len(cont); n > 0 && cont[n-1] == '\r' {
				cont = cont[:n-1]
			} else if !rules.bareLF {
				return nil, fmt.Errorf("malformed MIME header line %q: not ending in CRLF", clip(cont))
			}
			if !rules.fold {
				return nil, fmt.Errorf("malformed MIME header: %w: %q", errFold, clip(cont))
			}
			cont = trim(cont)
			if !validValue(cont) {
				return nil, fmt.Errorf("malformed MIME header line: %q: invalid value", clip(cont))
			}
			if s.Len() > start {
				s.WriteByte(' ')
			}
			s.Write(cont)
		}
		value := s.String()[start:]
		if hf != nil {
			switch {
			case key == "Transfer-Encoding":
				if hf.tes++; hf.tes == 1 {
					hf.te = value
				}
				continue
			case key == "Host" && rules.hostApart:
				if hf.hosts++; hf.hosts == 1 {
					hf.host = value
				}
				continue
			}
		}
		// Most keys have one value: a slice of one from the slab, which
		// a second value reallocates rather than overwriting the next.
		if len(slab) == 0 && spare > 0 {
			slab, spare = make([]string, spare), 0
		}
		if vv, ok := h[key]; ok {
			h[key] = append(vv, value)
		} else if len(slab) > 0 {
			vv, slab = slab[:1:1], slab[1:]
			vv[0] = value
			h[key] = vv
		} else {
			h[key] = []string{value}
		}
	}
}

// Errors of a Transfer-Encoding the codec does not read (each side
// answers them its own way: readRequest with Envoy's statuses, the
// response reader as an upstream that failed).
var (
	// errUnsupportedTE: anything but one field "chunked" (a request's
	// is answered 501, as Envoy's codec answers it).
	errUnsupportedTE = errors.New("unsupported transfer encoding")
	// errTEBeforeHTTP11: Transfer-Encoding on an HTTP/1.0 (or 0.x)
	// message, whose framing RFC 9112 section 6.1 says to treat as
	// faulty, closing the connection after it: a peer that framed it
	// with chunks would otherwise have them read as its next message.
	errTEBeforeHTTP11 = errors.New("transfer encoding before HTTP/1.1")
)

// chunkedEncoding reads the Transfer-Encoding fields hf counted (which
// leave the header): one field "chunked" and nothing else, on HTTP/1.1
// and later (an unset version, 0.0, counts as 1.1, as net/http reads
// it).
func chunkedEncoding(hf *headFields, major, minor int) (bool, error) {
	if hf.tes == 0 {
		return false, nil
	}
	if hf.tes != 1 || !asciiEqualFold(hf.te, "chunked") {
		return false, fmt.Errorf("parse header: %w: %q (%d fields)", errUnsupportedTE, hf.te, hf.tes)
	}
	if !(major > 1 || major == 1 && minor >= 1 || major == 0 && minor == 0) {
		return false, fmt.Errorf("parse header: %w: HTTP/%d.%d with chunked: faulty framing", errTEBeforeHTTP11, major, minor)
	}
	return true, nil
}

// contentLength is the length h's Content-Length fields say (-1: none),
// as net/http reads them: repeated only with the same number (then
// folded into one field), a number of up to 63 bits with spaces around
// it.
func contentLength(h http.Header) (int64, error) {
	lens, ok := h["Content-Length"]
	if !ok {
		return -1, nil
	}
	first := textproto.TrimString(lens[0])
	if len(lens) > 1 {
		for _, v := range lens[1:] {
			if textproto.TrimString(v) != first {
				return 0, fmt.Errorf("parse header: differing Content-Lengths %q", lens)
			}
		}
		h["Content-Length"] = []string{first}
	}
	if first == "" {
		return 0, errors.New("parse header: empty Content-Length")
	}
	n, err := strconv.ParseUint(first, 10, 63)
	if err != nil {
		return 0, fmt.Errorf("parse header: bad Content-Length %q", first)
	}
	return int64(n), nil
}

// declaredTrailers is the Trailer header's names as the message's
// Trailer keys, net/http's fixTrailer: comma-separated, canonical, never
// one of the fields that frame the message; nil for none.
func declaredTrailers(vv []string) (http.Header, error) {
	var t http.Header
	for _, v := range vv {
		for name := range strings.SplitSeq(v, ",") {
			name = textproto.TrimString(name)
			if name == "" {
				continue
			}
			name = http.CanonicalHeaderKey(name)
			switch name {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				return nil, fmt.Errorf("parse header: bad trailer name %q", name)
			}
			if t == nil {
				t = http.Header{}
			}
			t[name] = nil
		}
	}
	return t, nil
}

// shouldClose is net/http's: the connection closes after the message
// (HTTP/0.x; HTTP/1.0 without keep-alive; Connection: close);
// removeClose drops an HTTP/1.1 message's "Connection: close" from h
// (net/http does so for a response).
func shouldClose(major, minor int, h http.Header, removeClose bool) bool {
	if major < 1 {
		return true
	}
	conn := h["Connection"]
	hasClose := httpguts.HeaderValuesContainsToken(conn, "close")
	if major == 1 && minor == 0 {
		return hasClose || !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	}
	if hasClose && removeClose {
		delete(h, "Connection")
	}
	return hasClose
}

// pragmaNoCache: "Pragma: no-cache" implies "Cache-Control: no-cache"
// (RFC 7234), which net/http sets in a head that has no Cache-Control.
func pragmaNoCache(h http.Header) {
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
}

// bodyMode is how a message body is framed.
type bodyMode uint8

const (
	bodyLength  bodyMode = iota // Content-Length
	bodyChunked                 // chunked, then a trailer section
	bodyToClose                 // everything to the connection's close (a response's)
)

// msgBody is a message body read off a connection's reader, framed as
// its head says: a fixed length, chunks with their trailer section
// merged into *trailer at the end (read under rules), or everything to
// the close. It behaves as net/http's body: a connection that ends
// early is io.ErrUnexpectedEOF, the last bytes come with io.EOF, a read
// after Close is http.ErrBodyReadAfterClose, and Close reads what is
// left (so that the connection can carry the next message) unless the
// connection closes after this message and no trailers are to come.
// Unlike net/http's, an error is kept: every later read returns it
// (net/http's reports io.EOF after a short fixed-length body), so that
// no one takes a broken body for a whole one.
//
// Concurrency: as net/http's, mu is held across a read of the
// connection, so Close waits for a read in progress (a request's body
// is read by the upstream's writer while its handler may close it).
type msgBody struct {
	mu      sync.Mutex
	rd      *bufio.Reader
	left    int64     // of a fixed length
	chunks  io.Reader // chunked: the chunk reader
	trailer *http.Header
	err     error
	mode    bodyMode
	rules   fieldRules // the trailer section's
	closing bool       // the connection closes after this message
	eof     bool
	closed  bool
}

// respBody is the response side's name for it.
type respBody = msgBody

// errTrailerEOF: the connection ended in the trailer section.
var errTrailerEOF = errors.New("read trailer: unexpected EOF")

func (b *msgBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

// read is Read with b.mu held.
func (b *msgBody) read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.eof {
		return 0, io.EOF
	}
	var n int
	var err error
	switch b.mode {
	case bodyChunked:
		n, err = b.chunks.Read(p)
		if err == io.EOF {
			if err = b.readTrailer(); err == nil {
				b.eof = true
				return n, io.EOF
			}
		}
	case bodyLength:
		if b.left == 0 {
			b.eof = true
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err = b.rd.Read(p)
		b.left -= int64(n)
		if b.left == 0 {
			b.eof = true
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	default:
		n, err = b.rd.Read(p)
		if err == io.EOF {
			b.eof = true
		}
	}
	if err != nil && !b.eof {
		b.err = err
	}
	return n, err
}

// readTrailer reads the trailer section after the last chunk, as
// net/http does, and merges it into *b.trailer: an empty line at once,
// or fields, read under b.rules, ending in an empty line that must be
// in the read buffer within its size (so that a peer cannot make it
// unbounded): net/http waits for a CRLF CRLF there.
func (b *msgBody) readTrailer() error {
	br := b.rd
	p, err := br.Peek(2)
	if len(p) == 2 && p[0] == '\r' && p[1] == '\n' {
		br.Discard(2)
		return nil
	}
	if len(p) < 2 {
		return errTrailerEOF
	}
	if err != nil {
		return err
	}
	end := -1
	for {
		p, _ = br.Peek(br.Buffered())
		if end = bytes.Index(p, []byte("\r\n\r\n")); end >= 0 {
			break
		}
		if _, err := br.Peek(len(p) + 1); err != nil {
			switch {
			case errors.Is(err, bufio.ErrBufferFull):
				return fmt.Errorf("read trailer: trailers longer than %d bytes", br.Size())
			case errors.Is(err, io.EOF):
				return errTrailerEOF
			}
			return fmt.Errorf("read trailer: %w", err)
		}
	}
	section := p[:end+4]
	var s strings.Builder
	s.Grow(len(section))
	t := http.Header{}
	rest, err := readFields(&s, section, t, nil, bytes.Count(section, []byte{'\n'})-1, nil, b.rules)
	if err != nil {
		return fmt.Errorf("read trailer: %w", err)
	}
	br.Discard(len(section) - len(rest))
	if *b.trailer == nil {
		*b.trailer = t
	} else {
		for k, vv := range t {
			(*b.trailer)[k] = vv
		}
	}
	return nil
}

func (b *msgBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var err error
	switch {
	case b.eof || b.err != nil:
	case b.mode != bodyChunked && b.closing:
		// The connection closes next and no trailers are to come.
	default:
		_, err = io.Copy(io.Discard, lockedBody{b})
	}
	b.closed = true
	return err
}

// done: the body has been read to its end, and its connection is where
// the next message starts.
func (b *msgBody) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof && b.err == nil
}

// lockedBody reads a body whose mu its reader holds.
type lockedBody struct{ b *msgBody }

func (l lockedBody) Read(p []byte) (int, error) { return l.b.read(p) }

// tokenByte and valueByte are the bytes of a field name (a token) and
// of a field value (visible, obs-text, space and tab), as httpguts and
// textproto check them.
var tokenByte, valueByte = func() (tok, val [256]bool) {
	for c := range 256 {
		tok[c] = c < 0x80 && httpguts.IsTokenRune(rune(c))
		val[c] = httpguts.ValidHeaderFieldValue(string([]byte{byte(c)}))
	}
	return tok, val
}()

func validValue(v []byte) bool {
	for _, c := range v {
		if !valueByte[c] {
			return false
		}
	}
	return true
}

// commonKey interns the canonical keys messages mostly carry, so that
// theirs cost no bytes of the head's string; "" for another key. (A
// switch: the compiler compares lengths, then bytes, without hashing or
// converting k.)
func commonKey(k []byte) string {
	switch string(k) {
	case "Accept":
		return "Accept"
	case "Accept-Charset":
		return "Accept-Charset"
	case "Accept-Encoding":
		return "Accept-Encoding"
	case "Accept-Language":
		return "Accept-Language"
	case "Authorization":
		return "Authorization"
	case "Baggage":
		return "Baggage"
	case "Cache-Control":
		return "Cache-Control"
	case "Connection":
		return "Connection"
	case "Content-Encoding":
		return "Content-Encoding"
	case "Content-Length":
		return "Content-Length"
	case "Content-Type":
		return "Content-Type"
	case "Cookie":
		return "Cookie"
	case "Date":
		return "Date"
	case "Expect":
		return "Expect"
	case "Forwarded":
		return "Forwarded"
	case "Grpc-Accept-Encoding":
		return "Grpc-Accept-Encoding"
	case "Grpc-Encoding":
		return "Grpc-Encoding"
	case "Grpc-Timeout":
		return "Grpc-Timeout"
	case "Host":
		return "Host"
	case "If-Match":
		return "If-Match"
	case "If-Modified-Since":
		return "If-Modified-Since"
	case "If-None-Match":
		return "If-None-Match"
	case "Keep-Alive":
		return "Keep-Alive"
	case "Origin":
		return "Origin"
	case "Pragma":
		return "Pragma"
	case "Proxy-Connection":
		return "Proxy-Connection"
	case "Range":
		return "Range"
	case "Referer":
		return "Referer"
	case "Te":
		return "Te"
	case "Trailer":
		return "Trailer"
	case "Traceparent":
		return "Traceparent"
	case "Tracestate":
		return "Tracestate"
	case "Transfer-Encoding":
		return "Transfer-Encoding"
	case "Upgrade":
		return "Upgrade"
	case "User-Agent":
		return "User-Agent"
	case "Via":
		return "Via"
	case "X-B3-Parentspanid":
		return "X-B3-Parentspanid"
	case "X-B3-Sampled":
		return "X-B3-Sampled"
	case "X-B3-Spanid":
		return "X-B3-Spanid"
	case "X-B3-Traceid":
		return "X-B3-Traceid"
	case "X-Envoy-Attempt-Count":
		return "X-Envoy-Attempt-Count"
	case "X-Envoy-Expected-Rq-Timeout-Ms":
		return "X-Envoy-Expected-Rq-Timeout-Ms"
	case "X-Envoy-Original-Path":
		return "X-Envoy-Original-Path"
	case "X-Forwarded-Client-Cert":
		return "X-Forwarded-Client-Cert"
	case "X-Forwarded-For":
		return "X-Forwarded-For"
	case "X-Forwarded-Host":
		return "X-Forwarded-Host"
	case "X-Forwarded-Proto":
		return "X-Forwarded-Proto"
	case "X-Real-Ip":
		return "X-Real-Ip"
	case "X-Request-Id":
		return "X-Request-Id"
	}
	return ""
}

// dropCR drops the CR of a line's CRLF end (the LF is already off), as
// bufio.Reader.ReadLine does.
func dropCR(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\r' {
		return b[:n-1]
	}
	return b
}

// trim drops leading and trailing spaces and tabs, textproto's trim.
func trim(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	for j > i && (b[j-1] == ' ' || b[j-1] == '\t') {
		j--
	}
	return b[i:j]
}

// asciiEqualFold is strings.EqualFold for ASCII only: "chunKed" with a
// Kelvin sign is not "chunked".
func asciiEqualFold(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

func asciiDigit(c byte) bool { return '0' <= c && c <= '9' }

// clip is at most the first 80 bytes of b, for an error.
func clip(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}
