package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The limits the comparisons with net/http run under: the head within
// the connection's first buffer, so that neither side's buffer grows
// (the trailer section's bound is the buffer's size on both).
const (
	testMaxHead    = readBufferSize
	testMaxHeaders = 100
)

// readOurs reads one request from in with readRequest, into the
// h1Request of the request it read before (as a connection's requests
// reuse one), so that every comparison also checks that nothing of the
// request before shows through. (The tests that call it do not run in
// parallel.)
func readOurs(in []byte) (*http.Request, *sniffConn, error) {
	c := newSniffConn(&bytesConn{r: bytes.NewReader(in)})
	req, err := readRequest(c, testMaxHead, testMaxHeaders, reused)
	return req, c, err
}

var reused = new(h1Request)

// readTheirs reads one request from in with http.ReadRequest.
func readTheirs(in []byte) (*http.Request, *bufio.Reader, error) {
	br := bufio.NewReaderSize(bytes.NewReader(in), readBufferSize)
	req, err := http.ReadRequest(br)
	return req, br, err
}

// headView is what a request head sets of an *http.Request.
type headView struct {
	Method, Proto, Host, RequestURI string
	ProtoMajor, ProtoMinor          int
	URL                             *url.URL
	Header, Trailer                 http.Header
	ContentLength                   int64
	TransferEncoding                []string
	Close, NoBody                   bool
}

func viewOf(r *http.Request) headView {
	return headView{Method: r.Method, Proto: r.Proto, Host: r.Host, RequestURI: r.RequestURI,
		ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor, URL: r.URL, Header: r.Header, Trailer: r.Trailer,
		ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding, Close: r.Close, NoBody: r.Body == http.NoBody}
}

var cmpURL = cmp.AllowUnexported(url.Userinfo{})

// stricter: ours refused what net/http takes, for one of the reasons
// readRequest's doc gives.
func stricter(err error) bool {
	var eh *errHead
	return errors.As(err, &eh) || errors.Is(err, errStricter)
}

// compareWithNetHTTP reads in with both parsers and reports how they
// differ: ours may refuse only what net/http refuses, or for the
// reasons it gives; what both take must be equal in every field, in
// the body's bytes, the trailers and where the next request starts.
// It returns our error.
func compareWithNetHTTP(t *testing.T, in []byte) error {
	t.Helper()
	ours, c, oerr := readOurs(in)
	theirs, br, terr := readTheirs(in)
	switch {
	case oerr != nil && terr != nil:
		return oerr
	case oerr == nil && terr != nil:
		t.Fatalf("head %q: ours took it, net/http refused it: %v", in, terr)
	case oerr != nil:
		if !stricter(oerr) {
			t.Fatalf("head %q: ours refused it (%v), net/http took it", in, oerr)
		}
		return oerr
	}
	if d := cmp.Diff(viewOf(theirs), viewOf(ours), cmpURL); d != "" {
		t.Fatalf("head %q: request (-net/http +ours):\n%s", in, d)
	}
	ob, oerr := io.ReadAll(ours.Body)
	tb, terr := io.ReadAll(theirs.Body)
	switch {
	case oerr == nil && terr != nil:
		t.Fatalf("head %q: ours read the body %q, net/http failed: %v", in, ob, terr)
	case oerr != nil && terr == nil && !errors.Is(oerr, errStricter):
		t.Fatalf("head %q: ours failed reading the body (%v), net/http read %q", in, oerr, tb)
	case oerr != nil || terr != nil:
		return nil
	}
	if !bytes.Equal(ob, tb) {
		t.Fatalf("head %q: body: got %q, net/http %q", in, ob, tb)
	}
	if d := cmp.Diff(theirs.Trailer, ours.Trailer); d != "" {
		t.Fatalf("head %q: trailers after the body (-net/http +ours):\n%s", in, d)
	}
	orest, _ := io.ReadAll(c.br)
	trest, _ := io.ReadAll(br)
	if !bytes.Equal(orest, trest) {
		t.Fatalf("head %q: what follows the request: got %q, net/http %q", in, orest, trest)
	}
	return nil
}

func TestRequestHead(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		// status: 0 accepted (and equal to net/http's); 400 or 431
		// refused (net/http refuses too unless stricter says so).
		status int
	}{
		{"origin form", "GET /reviews/1?u=a&v=%41 HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n", 0},
		{"lower-case keys", "GET / HTTP/1.1\r\nhost: x\r\nx-request-id: 1\r\nx-b3-traceid: 2\r\nx-custom-thing: 3\r\n\r\n", 0},
		{"odd key case", "GET / HTTP/1.1\r\nHost: x\r\nX-CUSTOM-thing: 1\r\ncontent-TYPE: a\r\n1abc-d: 2\r\nx_y: 3\r\n\r\n", 0},
		{"bare LF", "GET / HTTP/1.1\nHost: x\nA: b\n\n", 0},
		{"values trimmed", "GET / HTTP/1.1\r\nHost:x\r\nA: \t b \t\r\nB:\r\nC:  \r\n\r\n", 0},
		{"repeated key", "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nA: 3\r\nA: 4\r\n\r\n", 0},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nA: one\r\n  two \r\n\tthree\r\nB: x\r\n\r\n", 0},
		{"obs-fold empty start", "GET / HTTP/1.1\r\nHost: x\r\nA:\r\n  \r\n two\r\nB: x\r\n   \r\n\r\n", 0},
		{"raw path", "GET /a%2Fb/c d HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"escaped path", "GET /a%2Fb/%7Ec;x=1,y HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"fragment and utf-8 in target", "GET /a#b/\xc3\xa9?q=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"force query", "GET /a? HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"two question marks", "GET /a?? HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"double slash", "GET //x/y HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"absolute form", "GET http://other:9080/abs?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n", 0},
		{"absolute form with user", "GET http://u:p@other/ HTTP/1.1\r\n\r\n", 0},
		{"authority form", "CONNECT reviews:9080 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n", 0},
		{"connect with a path", "CONNECT /_goRPC_ HTTP/1.1\r\n\r\n", 0},
		{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"HTTP/1.0", "GET / HTTP/1.0\r\n\r\n", 0},
		{"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n", 0},
		{"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", 0},
		{"pragma", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n", 0},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0},
		{"content-length body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n", 0},
		{"content-length zero", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0},
		{"same content-lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length:  3\r\n\r\nabc", 0},
		{"short body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 0},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nnext", 0},
		{"chunked upper case", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", 0},
		{"chunked with trailers", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status, X-B\r\n\r\n1\r\na\r\n0\r\ngrpc-status: 0\r\nx-b: 1\r\n\r\nnext", 0},
		{"trailer without chunks", "POST / HTTP/1.1\r\nHost: x\r\nTrailer: a\r\n\r\n", 0},
		{"chunked, HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"chunked, HTTP/0.9", "POST / HTTP/0.9\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"chunked, HTTP/1.0 keep-alive", "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\n", 400},
		{"cut chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 0},
		{"bad chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 0},
		{"empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 0},

		{"empty", "\r\n\r\n", 400},
		{"no target", "GET HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"two spaces", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad version", "GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400},
		{"lower-case version", "GET / http/1.1\r\nHost: x\r\n\r\n", 400},
		{"relative target", "GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"control byte in target", "GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"control byte in query", "GET /a?\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad escape", "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"first line folded", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nfoo\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400},
		{"bad name", "GET / HTTP/1.1\r\nHost: x\r\nA(b: v\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", 400},
		{"CR in value", "GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nA: b\x00\r\n\r\n", 400},
		{"CR in folded value", "GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\rd\r\n\r\n", 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400},
		{"bad host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"bad host char", "GET / HTTP/1.1\r\nHost: a<b\r\n\r\n", 400},
		{"content-length and chunked", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"content-length and identity", "POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\nabc", 400},
		{"differing content-lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"bad content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400},
		{"empty content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400},
		{"gzip", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"gzip, chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		{"two transfer-encodings", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
		{"gzip, HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"identity, HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: identity\r\n\r\nabc", 501},
		{"kelvin chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chun\xe2\x84\xaaed\r\n\r\n", 501},
		{"bad trailer name", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n0\r\n\r\n", 400},
		{"too many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("A: b\r\n", testMaxHeaders) + "\r\n", 431},
		{"too large", "GET / HTTP/1.1\r\nHost: x\r\nA: " + strings.Repeat("b", testMaxHead) + "\r\n\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := compareWithNetHTTP(t, []byte(tc.in))
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("got %v, want the request", err)
			case tc.status != 0 && err == nil:
				t.Fatalf("got the request, want status %d", tc.status)
			case tc.status != 0:
				status := http.StatusBadRequest
				var eh *errHead
				if errors.As(err, &eh) {
					status = eh.status
				}
				if status != tc.status {
					t.Fatalf("got status %d (%v), want %d", status, err, tc.status)
				}
			}
		})
	}
}

// TestRequestHeadWait: a head that arrives in pieces, that ends early,
// or that needs the buffer grown.
func TestRequestHeadWait(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		wantErr error
	}{
		{"nothing", "", io.EOF},
		{"cut in the request line", "GET / HT", io.ErrUnexpectedEOF},
		{"cut in the header", "GET / HTTP/1.1\r\nHost: x\r\n", io.ErrUnexpectedEOF},
		{"stray CRLF", "\r\n", io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readOurs([]byte(tc.in))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
	// A head larger than the first buffer: the buffer grows to the
	// limit and the whole head is read.
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 3*readBufferSize) + "\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
	c := newSniffConn(&bytesConn{r: bytes.NewReader([]byte(big))})
	req, err := readRequest(c, 60<<10, testMaxHeaders, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(req.Header.Get("X-Big")); got != 3*readBufferSize {
		t.Errorf("X-Big: got %d bytes, want %d", got, 3*readBufferSize)
	}
	if next, err := readRequest(c, 60<<10, testMaxHeaders, nil); err != nil || next.RequestURI != "/next" {
		t.Errorf("next request: got %v, %v, want /next", next, err)
	}
}

// TestRequestBody: the body behaves as net/http's where the waypoint
// relies on it.
func TestRequestBody(t *testing.T) {
	t.Run("close reads the rest", func(t *testing.T) {
		req, c, err := readOurs([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		if bodyDone(req.Body) {
			t.Fatal("body done before it was read")
		}
		if err := req.Body.Close(); err != nil {
			t.Fatal(err)
		}
		if !bodyDone(req.Body) {
			t.Fatal("body not done after Close")
		}
		if _, err := req.Body.Read(make([]byte, 1)); err != http.ErrBodyReadAfterClose {
			t.Fatalf("read after close: got %v, want %v", err, http.ErrBodyReadAfterClose)
		}
		next, err := readRequest(c, testMaxHead, testMaxHeaders, nil)
		if err != nil || next.RequestURI != "/next" {
			t.Fatalf("next request: got %v, %v, want /next", next, err)
		}
	})
	t.Run("close on a closing connection", func(t *testing.T) {
		req, _, err := readOurs([]byte("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhel"))
		if err != nil {
			t.Fatal(err)
		}
		if err := req.Body.Close(); err != nil {
			t.Fatalf("close: %v, want nothing read", err)
		}
		if bodyDone(req.Body) {
			t.Fatal("a body closed before its end counts as done")
		}
	})
	t.Run("short body stays broken", func(t *testing.T) {
		req, _, err := readOurs([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(req.Body); err != io.ErrUnexpectedEOF {
			t.Fatalf("got %v, want %v", err, io.ErrUnexpectedEOF)
		}
		if _, err := req.Body.Read(make([]byte, 1)); err != io.ErrUnexpectedEOF {
			t.Fatalf("read again: got %v, want %v", err, io.ErrUnexpectedEOF)
		}
		if bodyDone(req.Body) {
			t.Fatal("a short body counts as done")
		}
	})
	t.Run("trailers into a map set before", func(t *testing.T) {
		req, _, err := readOurs([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nGrpc-Status: 0\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		shared := http.Header{}
		req.Trailer = shared // as the router does when trailers pass
		if b, err := io.ReadAll(req.Body); err != nil || string(b) != "a" {
			t.Fatalf("body: got %q, %v, want a", b, err)
		}
		if got := shared.Get("Grpc-Status"); got != "0" {
			t.Fatalf("trailer Grpc-Status: got %q, want 0", got)
		}
	})
	t.Run("trailer with a space before the colon", func(t *testing.T) {
		req, _, err := readOurs([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length : 1\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(req.Body); !errors.Is(err, errStricter) {
			t.Fatalf("got %v, want the trailer refused", err)
		}
	})
}

// FuzzRequestHead compares readRequest with net/http.ReadRequest on the
// same bytes: whenever net/http refuses, ours refuses; whenever ours
// takes a request, net/http takes it and every field is equal, as are
// the body's bytes, the trailers and where the next request starts.
// Ours may refuse what net/http takes only for the reasons readRequest
// gives (errHead, errStricter).
func FuzzRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET /reviews/1?u=a HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n",
		"POST /r HTTP/1.1\r\nHost: reviews\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: a\r\n\r\n3\r\nabc\r\n0\r\nA: 1\r\n\r\n",
		"GET http://other:9080/abs?q=1 HTTP/1.0\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\nA: b\n c\n\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		compareWithNetHTTP(t, in)
	})
}

// benchHead is an Istio-like request head: a client's GET through the
// waypoint with the headers a mesh adds.
const benchHead = "GET /productpage?u=normal HTTP/1.1\r\n" +
	"Host: productpage.bookinfo.svc.cluster.local:9080\r\n" +
	"User-Agent: fortio.org/fortio-1.75.3\r\n" +
	"Accept: */*\r\n" +
	"x-request-id: 3f9d7c2e-8b1a-4c5d-9e6f-0a1b2c3d4e5f\r\n" +
	"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n" +
	"x-forwarded-proto: http\r\n" +
	"x-b3-sampled: 0\r\n" +
	"Accept-Encoding: gzip\r\n" +
	"\r\n"

// BenchmarkRequestHead reads benchHead with readRequest and with
// http.ReadRequest, from a reused buffer.
func BenchmarkRequestHead(b *testing.B) {
	in := []byte(benchHead)
	rd := bytes.NewReader(in)
	b.Run("ambit", func(b *testing.B) {
		c := &sniffConn{br: bufio.NewReaderSize(rd, readBufferSize)}
		b.ReportAllocs()
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			rd.Reset(in)
			c.br.Reset(rd)
			req, err := readRequest(c, 60<<10, 100, nil)
			if err != nil {
				b.Fatal(err)
			}
			req.Body.Close()
		}
	})
	b.Run("net-http", func(b *testing.B) {
		br := bufio.NewReaderSize(rd, readBufferSize)
		b.ReportAllocs()
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			rd.Reset(in)
			br.Reset(rd)
			req, err := http.ReadRequest(br)
			if err != nil {
				b.Fatal(err)
			}
			req.Body.Close()
		}
	})
}

// TestRequestHeadCombinations compares readRequest with net/http on
// every request line of a set with every pair of header lines of a
// set, the lines chosen where parsers disagree (framing, folding,
// whitespace, Host, case), each followed by a body and a next request.
func TestRequestHeadCombinations(t *testing.T) {
	lines := []string{
		"GET / HTTP/1.1", "POST /a?b HTTP/1.1", "POST http://h:1/p HTTP/1.1", "PUT /x HTTP/1.0",
		"CONNECT h:443 HTTP/1.1", "OPTIONS * HTTP/1.1", "PRI * HTTP/2.0", "POST / HTTP/0.0", "POST / HTTP/1.2",
	}
	fields := []string{
		"", "Host: h", "host: h:80", "Host: ", "Host: [::1]:8", "Host: a_b",
		"Content-Length: 3", "content-length: 03", "Content-Length: 3 ", "Content-Length: 4", "Content-Length: -1", "Content-Length: 3,3",
		"Transfer-Encoding: chunked", "transfer-encoding: CHUNKED", "Transfer-Encoding: chunked, identity", "Transfer-Encoding: identity",
		"Trailer: x-t", "Connection: close", "Connection: keep-alive", "Pragma: no-cache", "Cache-Control: max-age=1",
		"X-A: 1\r\n 2", "X-A:\r\n\t3", "X-A: b\r\nx-a: c", " folded: 1", "NoColon", "X\tA: 1", "X-A : 1", "X-A: \x01",
	}
	bodies := []string{"abc", "3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", "0\r\n\r\n"}
	n, took := 0, 0
	for _, l := range lines {
		for _, f1 := range fields {
			for _, f2 := range fields {
				for _, body := range bodies {
					head := l + "\r\n"
					for _, f := range []string{f1, f2} {
						if f != "" {
							head += f + "\r\n"
						}
					}
					in := head + "\r\n" + body + "GET /next HTTP/1.1\r\nHost: n\r\n\r\n"
					if compareWithNetHTTP(t, []byte(in)) == nil {
						took++
					}
					n++
				}
			}
		}
	}
	t.Logf("%d heads compared, %d taken", n, took)
}

// TestRequestHeadReuse: a connection's next request reuses the
// h1Request of the one before, header map included, and nothing of the
// request before shows through; a map that grew past maxReusedFields is
// not kept.
func TestRequestHeadReuse(t *testing.T) {
	a := new(h1Request)
	read := func(in string) *http.Request {
		t.Helper()
		c := newSniffConn(&bytesConn{r: bytes.NewReader([]byte(in))})
		req, err := readRequest(c, testMaxHead, testMaxHeaders, a)
		if err != nil {
			t.Fatalf("read %q: %v", in, err)
		}
		return req
	}
	first := read("POST /a?q=1 HTTP/1.1\r\nHost: one\r\nX-Old: 1\r\nX-Old: 2\r\nContent-Length: 3\r\nTrailer: X-T\r\n\r\nabc")
	firstMap := reflect.ValueOf(first.Header).UnsafePointer()
	second := read("GET /b HTTP/1.1\r\nHost: two\r\nX-New: 3\r\n\r\n")
	want, _, err := readTheirs([]byte("GET /b HTTP/1.1\r\nHost: two\r\nX-New: 3\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(viewOf(want), viewOf(second), cmpURL); d != "" {
		t.Errorf("the second request (-net/http +ours, reused):\n%s", d)
	}
	if got := reflect.ValueOf(second.Header).UnsafePointer(); got != firstMap {
		t.Errorf("the header map: a new one, want the first request's reused")
	}
	var many strings.Builder
	many.WriteString("GET /c HTTP/1.1\r\nHost: three\r\n")
	for i := range maxReusedFields + 1 {
		fmt.Fprintf(&many, "X-F%d: v\r\n", i)
	}
	many.WriteString("\r\n")
	big := read(many.String())
	bigMap := reflect.ValueOf(big.Header).UnsafePointer()
	if last := read("GET /d HTTP/1.1\r\nHost: four\r\n\r\n"); len(last.Header) != 0 || reflect.ValueOf(last.Header).UnsafePointer() == bigMap {
		t.Errorf("after a request of %d fields: got %d fields, or its map kept", maxReusedFields+1, len(last.Header))
	}
}
