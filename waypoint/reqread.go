package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// readRequest reads one HTTP/1 request head off a downstream connection
// and returns the request it is (respread.go reads the upstreams'
// responses, respwrite.go writes the answers). It replaces checkHead
// plus net/http.ReadRequest, which at 1,000 req/s cost about 7 % of the
// waypoint's CPU and 22 allocations per request (a string per
// line, per key and per value, textproto's reader, a second pass over
// the head for the checks): here the whole head is waited for in the
// connection's buffer, then read in one pass into one string (the
// request line, each key not interned and each value are substrings of
// it), one header map, and one struct holding the request, its URL and
// the value slices of its first seven fields: 4 allocations for a
// typical head (docs/performance.md, "The waypoint's own HTTP/1 request
// parser").
//
// What it returns is what http.ReadRequest returns for the same bytes
// (FuzzRequestHead and TestRequestHead compare them field by field, and
// the body byte by byte): textproto's reading of header lines (bare LF
// line ends, obs-fold joined with one space, values trimmed, keys
// canonical), net/http's framing (a single Transfer-Encoding, chunked,
// on HTTP/1.1 and later only; identical Content-Lengths folded into
// one; no body without either), its Host (the absolute target's, else
// the Host header's, which leaves Header), Close, Trailer, the HTTP/2
// preface as a request with Close, and a body whose Read and Close
// behave as net/http's (ErrUnexpectedEOF for a connection that ends
// early, the trailer section merged into req.Trailer, Close reading the
// rest unless the connection closes next).
//
// Refused as well, where net/http.ReadRequest would let the request
// through, as Envoy refuses them (status 400 unless said):
//   - a head longer than maxBytes (max_request_headers_kb) or with more
//     than maxHeaders fields (max_headers_count): 431;
//   - Content-Length together with Transfer-Encoding, whatever the
//     values and the version (Envoy without allow_chunked_length; net/http
//     would drop the length): the classic request-smuggling ambiguity;
//   - whitespace between a field name and its colon ("Content-Length :
//     5"), which textproto accepts as a key of its own that no one reads
//     as Content-Length (RFC 9112 section 5.1: a server MUST reject it;
//     net/http's server refuses it too), in heads and trailers;
//   - a Host header that is not a valid authority (net/http's server and
//     Envoy's request header checks).
//
// On request smuggling: the body's framing is net/http's, so a client
// that frames a request one way cannot have it read another way here;
// every framing net/http and Envoy could read differently is refused
// above, but one: Transfer-Encoding on HTTP/1.0 is ignored as net/http
// ignores it (the request has no body, and what follows is read as the
// next request), where Envoy reads the chunks. HTTP/1.0 reaches the
// connection manager's filters only with accept_http_10, and without
// Connection: keep-alive its connection closes after it.
//
// The errors it returns are io.EOF (the connection ended before a
// byte), io.ErrUnexpectedEOF (in the middle of a head), the
// connection's read error, *errHead for the limits and the smuggling
// check, and any other error for a head that does not parse.
func readRequest(c *sniffConn, maxBytes, maxHeaders int) (*http.Request, error) {
	c.wait()
	n, fields, hosts, err := waitHead(c, maxBytes)
	if err != nil {
		return nil, err
	}
	if fields > maxHeaders {
		return nil, &errHead{http.StatusRequestHeaderFieldsTooLarge, "too many headers"}
	}
	br := c.br
	head, _ := br.Peek(n)
	req, err := parseHead(head, fields-hosts, br)
	br.Discard(n)
	return req, err
}

// waitHead waits until c's buffer holds a whole request head: the
// request line, the header lines and the empty line ending them (CRLF
// or a bare LF, as net/http reads lines). It returns the head's length,
// its number of header fields (lines that do not continue the one
// before) and how many of them are Host (which does not go into the
// header map: a map made for eight or fewer is half the size). The
// buffer grows to maxBytes for a head that needs it.
func waitHead(c *sniffConn, maxBytes int) (n, fields, hosts int, err error) {
	off, lines := 0, 0 // off: where the first line not looked at starts
	for {
		br := c.br
		b, _ := br.Peek(br.Buffered())
		for {
			i := bytes.IndexByte(b[off:], '\n')
			if i < 0 {
				break
			}
			line := b[off : off+i]
			off += i + 1
			if lines > 0 {
				if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
					if off > maxBytes {
						return 0, 0, 0, &errHead{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}
					}
					return off, fields, hosts, nil
				}
				if line[0] != ' ' && line[0] != '\t' {
					fields++
					if len(line) > 4 && line[4] == ':' && line[0]|0x20 == 'h' && line[1]|0x20 == 'o' && line[2]|0x20 == 's' && line[3]|0x20 == 't' {
						hosts++
					}
				}
			}
			lines++
		}
		if len(b) >= maxBytes {
			return 0, 0, 0, &errHead{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}
		}
		// Wait for more.
		if _, err := br.Peek(len(b) + 1); err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				if br.Size() < maxBytes {
					c.grow(maxBytes)
					c.br.Peek(len(b)) // the same bytes again: off holds
					continue
				}
				return 0, 0, 0, &errHead{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}
			}
			if len(b) > 0 && errors.Is(err, io.EOF) {
				return 0, 0, 0, io.ErrUnexpectedEOF
			}
			return 0, 0, 0, err
		}
	}
}

// errStricter marks the heads refused here that net/http.ReadRequest
// would take (readRequest's doc: Envoy refuses them).
var errStricter = errors.New("refused as Envoy does")

// h1Request is what one request head allocates besides its strings and
// its header map: the request, its URL and the value slices of up to
// seven header fields.
type h1Request struct {
	req http.Request
	url url.URL
	// vals: seven, so that the struct and the allocator's 8-byte
	// header of an object this large fit the 576-byte size class (with
	// eight it takes 640); a body, when there is one, is allocated apart.
	vals [7]string
}

// headFields is what the head's fields say that net/http does not keep
// in Header: Host and Transfer-Encoding.
type headFields struct {
	hosts int
	host  string
	tes   int
	te    string
}

// parseHead parses a whole head (waitHead's), whose body follows in br;
// fields is about how many go into the header map (a hint).
func parseHead(head []byte, fields int, br *bufio.Reader) (*http.Request, error) {
	a := new(h1Request)
	req := &a.req
	// Every string of the request is a piece of s: the request line,
	// the keys that are not common, the values (joined when folded).
	var s strings.Builder
	s.Grow(len(head))

	// The request line: method SP request-target SP version, split at
	// the first two spaces as net/http does (so a target cannot hold a
	// space, and the version is all that follows).
	i := bytes.IndexByte(head, '\n')
	s.Write(dropCR(head[:i]))
	rest := head[i+1:]
	line := s.String()
	method, after, ok1 := strings.Cut(line, " ")
	uri, proto, ok2 := strings.Cut(after, " ")
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("parse request line %q: malformed", line)
	}
	if !httpguts.ValidHeaderFieldName(method) { // a token
		return nil, fmt.Errorf("parse request line %q: invalid method", line)
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		return nil, fmt.Errorf("parse request line %q: malformed version", line)
	}
	req.Method, req.RequestURI, req.Proto, req.ProtoMajor, req.ProtoMinor = method, uri, proto, major, minor
	switch {
	case method == "CONNECT" && !strings.HasPrefix(uri, "/"):
		// authority-form: parsed as the authority of a URL, as net/http
		// does (a CONNECT with a path is net/rpc's, parsed as a path).
		u, err := url.ParseRequestURI("http://" + uri)
		if err != nil {
			return nil, fmt.Errorf("parse request target: %w", err)
		}
		u.Scheme = ""
		req.URL = u
	case parseOriginForm(&a.url, uri):
		req.URL = &a.url
	default:
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return nil, fmt.Errorf("parse request target: %w", err)
		}
		req.URL = u
	}

	// The header fields.
	h := make(http.Header, fields)
	var hf headFields
	if _, err := readFields(&s, rest, h, a.vals[:], fields-len(a.vals), &hf); err != nil {
		return nil, err
	}
	req.Header = h
	if hf.hosts > 1 {
		return nil, errors.New("parse header: too many Host headers")
	}
	if hf.hosts == 1 && !httpguts.ValidHostHeader(hf.host) {
		return nil, fmt.Errorf("parse header: malformed Host %q: %w", hf.host, errStricter)
	}
	contentLens, haveCL := h["Content-Length"]
	if hf.tes > 0 && haveCL {
		return nil, &errHead{http.StatusBadRequest, "content-length and transfer-encoding together"}
	}
	req.Host = req.URL.Host
	if req.Host == "" {
		req.Host = hf.host
	}
	// Pragma: no-cache implies Cache-Control: no-cache (RFC 7234), as
	// net/http sets it.
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	// Close: HTTP/1.0 without keep-alive, or Connection: close.
	conn := h["Connection"]
	hasClose := httpguts.HeaderValuesContainsToken(conn, "close")
	switch {
	case major < 1:
		req.Close = true
	case major == 1 && minor == 0:
		req.Close = hasClose || !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	default:
		req.Close = hasClose
	}

	// The framing of the body, net/http's: Transfer-Encoding counts on
	// HTTP/1.1 and later only (an unset version, HTTP/0.0, counts as
	// 1.1), as one field "chunked" and nothing else; then Content-Length,
	// all of its fields the same number.
	chunked := false
	if hf.tes > 0 && (major > 1 || major == 1 && minor >= 1 || major == 0 && minor == 0) {
		if hf.tes != 1 {
			return nil, errors.New("parse header: too many transfer encodings")
		}
		if !asciiEqualFold(hf.te, "chunked") {
			return nil, fmt.Errorf("parse header: unsupported transfer encoding %q", hf.te)
		}
		chunked = true
	}
	var length int64
	if len(contentLens) > 1 {
		first := textproto.TrimString(contentLens[0])
		for _, v := range contentLens[1:] {
			if textproto.TrimString(v) != first {
				return nil, fmt.Errorf("parse header: differing Content-Lengths %q", contentLens)
			}
		}
		contentLens = []string{first}
		h["Content-Length"] = contentLens
	}
	if len(contentLens) > 0 {
		v := textproto.TrimString(contentLens[0])
		if v == "" {
			return nil, errors.New("parse header: empty Content-Length")
		}
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return nil, fmt.Errorf("parse header: bad Content-Length %q", v)
		}
		length = int64(n)
	}
	if chunked {
		delete(h, "Content-Length")
		length = -1
		req.TransferEncoding = []string{"chunked"}
		// Declared trailers (a Trailer header without chunking stays a
		// header, as net/http leaves it).
		if vv, ok := h["Trailer"]; ok {
			delete(h, "Trailer")
			t, err := declaredTrailers(vv)
			if err != nil {
				return nil, err
			}
			req.Trailer = t
		}
	}
	req.ContentLength = length
	switch {
	case chunked:
		req.Body = &reqBody{br: br, chunks: httputil.NewChunkedReader(br), req: req, closing: req.Close}
	case length > 0:
		req.Body = &reqBody{br: br, left: length, closing: req.Close}
	default:
		req.Body = http.NoBody
	}
	// The HTTP/2 preface read as HTTP/1 ("PRI * HTTP/2.0" and no
	// fields): net/http marks it to close, its length unknown.
	if method == "PRI" && len(h) == 0 && hf.hosts == 0 && req.URL.Path == "*" && proto == "HTTP/2.0" {
		req.ContentLength = -1
		req.Close = true
	}
	return req, nil
}

// readFields reads header fields from b, up to and including the empty
// line that ends them (b holds one), as textproto.Reader.ReadMIMEHeader
// does: a line that starts with a space or tab continues the field
// before it (joined with one space), a value is trimmed of spaces and
// tabs, a key is canonical. Values go into s, and each key's first
// into a slice of slab, then of one more slab of spare slices.
// hf, when not nil (a request head), takes Host and Transfer-Encoding,
// which do not go into h. It returns what follows the empty line.
func readFields(s *strings.Builder, b []byte, h http.Header, slab []string, spare int, hf *headFields) ([]byte, error) {
	if len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		return nil, errors.New("parse header: first line starts with a space")
	}
	var kb [64]byte // a key, canonical
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, io.ErrUnexpectedEOF // (callers give b an end)
		}
		line := dropCR(b[:i])
		b = b[i+1:]
		if len(line) == 0 {
			return b, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return nil, fmt.Errorf("parse header line %q: no colon", line)
		}
		if colon == 0 {
			return nil, fmt.Errorf("parse header line %q: empty name", line)
		}
		// The key, canonical: the first letter and each after a hyphen
		// upper case, the others lower case.
		k := kb[:0]
		upper := true
		for _, c := range line[:colon] {
			if !tokenByte[c] {
				if c == ' ' {
					return nil, fmt.Errorf("parse header line %q: space before the colon: %w", line, errStricter)
				}
				return nil, fmt.Errorf("parse header line %q: invalid name", line)
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
		// The value: the line's after the colon, then each continuation
		// line's, trimmed and joined with one space; leading blanks
		// dropped from the whole (so a folded value that starts empty
		// starts with its first non-empty piece, as textproto has it).
		start := s.Len()
		v := trim(line[colon+1:])
		if !validValue(v) {
			return nil, fmt.Errorf("parse header line %q: invalid value", line)
		}
		s.Write(v)
		for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return nil, io.ErrUnexpectedEOF
			}
			cont := trim(dropCR(b[:i]))
			b = b[i+1:]
			if !validValue(cont) {
				return nil, fmt.Errorf("parse header line %q: invalid value", cont)
			}
			if s.Len() > start {
				s.WriteByte(' ')
			}
			s.Write(cont)
		}
		value := s.String()[start:]
		if hf != nil {
			switch key {
			case "Host":
				if hf.hosts++; hf.hosts == 1 {
					hf.host = value
				}
				continue
			case "Transfer-Encoding":
				if hf.tes++; hf.tes == 1 {
					hf.te = value
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

// declaredTrailers is the Trailer header's names as req.Trailer's keys,
// net/http's fixTrailer: comma-separated, canonical, never one of the
// fields that frame the message.
func declaredTrailers(vv []string) (http.Header, error) {
	t := http.Header{}
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
			t[name] = nil
		}
	}
	if len(t) == 0 {
		return nil, nil
	}
	return t, nil
}

// parseOriginForm sets u to an origin-form target ("/path?query") made
// only of bytes that url.ParseRequestURI takes as they are, and reports
// whether it did; any other target is left to url.ParseRequestURI.
func parseOriginForm(u *url.URL, uri string) bool {
	if uri == "" || uri[0] != '/' {
		return false
	}
	path, query, hasQuery := uri, "", false
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		path, query, hasQuery = uri[:i], uri[i+1:], true
	}
	for i := 1; i < len(path); i++ {
		if !pathByte[path[i]] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < ' ' || c == 0x7f {
			return false // (url refuses control bytes)
		}
	}
	u.Path, u.RawQuery, u.ForceQuery = path, query, hasQuery && query == ""
	return true
}

// pathByte says which bytes a path may hold for url.ParseRequestURI to
// keep it as Path with no RawPath (not escaped, not changed): asked of
// url itself, byte by byte, so that parseOriginForm cannot drift from
// it. ('%' and '?' are never taken as they are.)
var pathByte = func() (t [256]bool) {
	for c := range 256 {
		if c == '%' || c == '?' {
			continue
		}
		p := "/a" + string([]byte{byte(c)})
		u, err := url.ParseRequestURI(p)
		t[c] = err == nil && u.Path == p && u.RawPath == "" && u.RawQuery == "" && !u.ForceQuery && u.Host == ""
	}
	return t
}()

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

// commonKey interns the canonical keys requests mostly carry, so that
// theirs cost no string; "" for another key. (A switch: the compiler
// compares lengths, then bytes, without hashing or converting k.)
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

// reqBody is a request body read off the connection: a fixed length, or
// chunked with its trailer section read into req.Trailer at the end. It
// behaves as net/http's request body: a connection that ends early is
// io.ErrUnexpectedEOF, the last bytes come with io.EOF, a read after
// Close is http.ErrBodyReadAfterClose, and Close reads what is left
// (so that the connection can carry the next request) unless the
// connection closes after this request and no trailers are to come.
// Unlike net/http's, an error is kept: every later read returns it
// (net/http's reports io.EOF after a short fixed-length body), so that
// no one takes a broken body for a whole one.
//
// Concurrency: as net/http's, mu is held across a read of the
// connection, so Close waits for a read in progress.
type reqBody struct {
	mu      sync.Mutex
	br      *bufio.Reader
	left    int64     // of a fixed length
	chunks  io.Reader // chunked: the chunk reader; nil for a fixed length
	req     *http.Request
	closing bool // the connection closes after this request
	eof     bool
	closed  bool
	err     error
}

// errTrailerEOF: the connection ended in the trailer section.
var errTrailerEOF = errors.New("read trailer: unexpected EOF")

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

// read is Read with b.mu held.
func (b *reqBody) read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.chunks != nil {
		n, err := b.chunks.Read(p)
		if err == io.EOF {
			if terr := b.readTrailer(); terr != nil {
				err = terr
			} else {
				b.eof = true
				return n, io.EOF
			}
		}
		if err != nil {
			b.err = err
		}
		return n, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		b.eof = true
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

// readTrailer reads the trailer section after the last chunk, as
// net/http does: an empty line at once, or fields ending in an empty
// line that must be in the read buffer within its size (so that a
// client cannot make it unbounded).
func (b *reqBody) readTrailer() error {
	br := b.br
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
	// Wait for a CRLF CRLF within the buffer (net/http's bound; the
	// section then ends at the first empty line, CRLF or LF).
	end := -1
	for {
		p, _ = br.Peek(br.Buffered())
		if end = bytes.Index(p, []byte("\r\n\r\n")); end >= 0 {
			break
		}
		if _, err := br.Peek(len(p) + 1); err != nil {
			return errors.New("read trailer: longer than the read buffer, or cut off")
		}
	}
	section := p[:end+4]
	var s strings.Builder
	s.Grow(len(section))
	t := http.Header{}
	rest, err := readFields(&s, section, t, nil, 0, nil)
	if err != nil {
		return fmt.Errorf("read trailer: %w", err)
	}
	br.Discard(len(section) - len(rest))
	if b.req.Trailer == nil {
		b.req.Trailer = t
	} else {
		for k, vv := range t {
			b.req.Trailer[k] = vv
		}
	}
	return nil
}

func (b *reqBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var err error
	switch {
	case b.eof || b.err != nil:
	case b.chunks == nil && b.closing:
		// The connection closes next and no trailers are to come.
	default:
		_, err = io.Copy(io.Discard, lockedBody{b})
	}
	b.closed = true
	return err
}

// done: the body has been read to its end, and its connection is where
// the next request starts.
func (b *reqBody) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof && b.err == nil
}

// lockedBody reads a body whose mu its reader holds.
type lockedBody struct{ b *reqBody }

func (l lockedBody) Read(p []byte) (int, error) { return l.b.read(p) }

// bodyDone: a request's body (as readRequest made it) has been read to
// its end.
func bodyDone(body io.ReadCloser) bool {
	b, ok := body.(*reqBody)
	return !ok || b.done()
}
