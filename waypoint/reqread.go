package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

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
// canonical), net/http's framing (a single Transfer-Encoding, chunked;
// identical Content-Lengths folded into one; no body without either),
// its Host (the absolute target's, else
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
//     Envoy's request header checks);
//   - a Transfer-Encoding that is not one field "chunked" ("gzip",
//     "gzip, chunked", two fields): 501 Not Implemented, as Envoy's codec
//     answers it (RFC 9112 section 6.1: a server SHOULD answer 501 for a
//     coding it does not understand), where net/http answers 400;
//   - Transfer-Encoding on HTTP/1.0 (or 0.x), which net/http ignores,
//     reading the request as one without a body and its chunks as the
//     next request: RFC 9112 section 6.1 has a server treat its framing
//     as faulty and close the connection after it, so it is refused
//     (and the connection closed) before anything reads a body. (Here
//     the rule is RFC 9112's: Envoy's codec has no check of its own.)
//
// On request smuggling: the body's framing is net/http's, so a client
// that frames a request one way cannot have it read another way here;
// every framing net/http and Envoy could read differently is refused
// above.
//
// The errors it returns are io.EOF (the connection ended before a
// byte), io.ErrUnexpectedEOF (in the middle of a head), the
// connection's read error, *errHead for the limits, the framing checks
// and the transfer codings, and any other error for a head that does
// not parse.
//
// a, if not nil, is the previous request's h1Request on the connection,
// reused (the request, its URL, its header map): the caller is done with
// that request and everything it refers to.
func readRequest(c *sniffConn, maxBytes, maxHeaders int, a *h1Request) (*http.Request, error) {
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
	req, err := parseHead(a, head, fields-hosts, br)
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
	var sc headScan
	for {
		br := c.br
		b, _ := br.Peek(br.Buffered())
		if n, ok := sc.scan(b); ok {
			if n > maxBytes {
				return 0, 0, 0, &errHead{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}
			}
			return n, sc.fields, sc.hosts, nil
		}
		if len(b) >= maxBytes {
			return 0, 0, 0, &errHead{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}
		}
		// Wait for more.
		if _, err := br.Peek(len(b) + 1); err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				if br.Size() < maxBytes {
					c.grow(maxBytes)
					c.br.Peek(len(b)) // the same bytes again: sc holds
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

// h1Request is what one request head allocates besides its strings:
// the request, its URL, its header map and the value slices of up to
// seven header fields. A connection's requests reuse one (readRequest),
// which saves about 1 KB and three allocations per request.
type h1Request struct {
	req http.Request
	url url.URL
	// hdr is the header map, kept for the next request (cleared).
	hdr http.Header
	// vals: seven, so that the struct and the allocator's 8-byte
	// header of an object this large fit the 576-byte size class (with
	// eight it takes 640); a body, when there is one, is allocated apart.
	vals [7]string
}

// maxReusedFields is the largest header map kept for a connection's next
// request: a cleared map keeps its size, and one request with many
// fields should not make every connection hold a large one.
const maxReusedFields = 32

// parseHead parses a whole head (waitHead's), whose body follows in br,
// into a (a new one if nil; see readRequest); fields is about how many
// go into the header map (a hint).
func parseHead(a *h1Request, head []byte, fields int, br *bufio.Reader) (*http.Request, error) {
	var h http.Header
	if a == nil {
		a = new(h1Request)
	} else {
		if len(a.hdr) <= maxReusedFields {
			h = a.hdr
			clear(h)
		}
		*a = h1Request{}
	}
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
	if h == nil {
		h = make(http.Header, fields)
	}
	a.hdr = h
	var hf headFields
	if _, err := readFields(&s, rest, h, a.vals[:], fields-len(a.vals), &hf, requestHeadFields); err != nil {
		return nil, err
	}
	req.Header = h
	if hf.hosts > 1 {
		return nil, errors.New("parse header: too many Host headers")
	}
	if hf.hosts == 1 && !httpguts.ValidHostHeader(hf.host) {
		return nil, fmt.Errorf("parse header: malformed Host %q: %w", hf.host, errStricter)
	}
	if _, haveCL := h["Content-Length"]; hf.tes > 0 && haveCL {
		return nil, &errHead{http.StatusBadRequest, "content-length and transfer-encoding together"}
	}
	req.Host = req.URL.Host
	if req.Host == "" {
		req.Host = hf.host
	}
	pragmaNoCache(h)
	req.Close = shouldClose(major, minor, h, false)

	// The framing of the body, net/http's: chunked, else Content-Length,
	// else none.
	chunked, err := chunkedEncoding(&hf, major, minor)
	switch {
	case errors.Is(err, errUnsupportedTE):
		return nil, &errHead{http.StatusNotImplemented, err.Error()}
	case errors.Is(err, errTEBeforeHTTP11):
		return nil, &errHead{http.StatusBadRequest, err.Error()}
	case err != nil:
		return nil, err
	}
	length, err := contentLength(h)
	if err != nil {
		return nil, err
	}
	length = max(length, 0)
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
		req.Body = &msgBody{rd: br, mode: bodyChunked, chunks: httputil.NewChunkedReader(br), trailer: &req.Trailer, rules: requestTrailerFields, closing: req.Close}
	case length > 0:
		req.Body = &msgBody{rd: br, mode: bodyLength, left: length, closing: req.Close}
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

// bodyDone: a request's body (as readRequest made it) has been read to
// its end.
func bodyDone(body io.ReadCloser) bool {
	b, ok := body.(*msgBody)
	return !ok || b.done()
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
