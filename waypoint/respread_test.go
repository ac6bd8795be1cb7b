package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The response head parser (respread.go) against http.ReadResponse:
// what it takes, it reads as ReadResponse does (fields, body, trailers,
// what is left on the connection); what ReadResponse refuses, it
// refuses.

// readBufSize is the pooled response reader's size (readers).
const readBufSize = 16 << 10

// compareRead reads raw with both parsers and fails tb where they
// disagree in a way the parser must not: ours taking what net/http
// refuses, or reading it otherwise. It reports whether ours took the
// head.
func compareRead(tb testing.TB, raw []byte, method string) bool {
	tb.Helper()
	var req *http.Request
	if method != "" {
		req = &http.Request{Method: method}
	}
	ourRd := bufio.NewReaderSize(bytes.NewReader(raw), readBufSize)
	theirRd := bufio.NewReaderSize(bytes.NewReader(raw), readBufSize)
	ours, err := readResponse(ourRd, req)
	theirs, theirErr := http.ReadResponse(theirRd, req)
	if err != nil {
		return false
	}
	if theirErr != nil {
		tb.Fatalf("ours takes %q, net/http refuses it: %v", raw, theirErr)
	}
	opts := cmpopts.IgnoreFields(http.Response{}, "Body", "Request")
	if diff := cmp.Diff(theirs, ours, opts); diff != "" {
		tb.Fatalf("%q: response (-net/http +ours):\n%s", raw, diff)
	}
	if ours.Request != req {
		tb.Errorf("%q: Request not the request", raw)
	}
	if got, want := ours.Body == http.NoBody, theirs.Body == http.NoBody; got != want {
		tb.Fatalf("%q: body is NoBody: got %v, want %v", raw, got, want)
	}
	body, err := io.ReadAll(ours.Body)
	theirBody, theirErr := io.ReadAll(theirs.Body)
	if err != nil {
		return true
	}
	if theirErr != nil {
		tb.Fatalf("%q: ours reads the body whole, net/http fails: %v", raw, theirErr)
	}
	if !bytes.Equal(body, theirBody) {
		tb.Fatalf("%q: body: got %q, want %q", raw, body, theirBody)
	}
	if diff := cmp.Diff(theirs.Trailer, ours.Trailer); diff != "" {
		tb.Fatalf("%q: trailers after the body (-net/http +ours):\n%s", raw, diff)
	}
	rest, _ := io.ReadAll(ourRd)
	theirRest, _ := io.ReadAll(theirRd)
	if !bytes.Equal(rest, theirRest) {
		tb.Fatalf("%q: left after the body: got %q, want %q", raw, rest, theirRest)
	}
	return true
}

// compareWrite writes the response in raw (as net/http reads it) with
// the writer and with Response.Write, framed as h1Responder.proxied
// frames it, and fails tb where the bytes differ.
func compareWrite(tb testing.TB, raw []byte, method string, reqMinor int) {
	tb.Helper()
	read := func() *http.Response {
		req := &http.Request{Method: method, ProtoMajor: 1, ProtoMinor: reqMinor}
		resp, err := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(raw), readBufSize), req)
		if err != nil {
			return nil
		}
		if resp.ContentLength < 0 && req.ProtoAtLeast(1, 1) {
			resp.TransferEncoding = []string{"chunked"}
			if resp.Trailer == nil {
				resp.Trailer = http.Header{}
			}
		} else {
			resp.TransferEncoding = nil
		}
		resp.ProtoMajor, resp.ProtoMinor = 1, 1
		return resp
	}
	a, b := read(), read()
	if a == nil || !statusHasBody(a.StatusCode) && method != http.MethodHead {
		return // (no framing there: TestWriteResponseNoBodyStatus)
	}
	want, wantErr := netHTTPWrite(a)
	got, _, err := ourWrite(b)
	if (err != nil) != (wantErr != nil) {
		tb.Fatalf("%q: write error: got %v, want %v", raw, err, wantErr)
	}
	if err == nil && got != want {
		tb.Fatalf("%q: written:\ngot  %q\nwant %q", raw, got, want)
	}
}

var readCases = []struct {
	name, raw, method string
	// ok: ours takes the head.
	ok bool
}{
	{"length", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n", "GET", true},
	{"bare LF lines", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "GET", true},
	{"names canonical, values trimmed", "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-envoy-UPSTREAM: \t a b \t\r\nX-Empty:\r\nX-A-: 1\r\n\r\n", "GET", true},
	{"multi-value", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: Accept\r\nset-cookie: b=2\r\nSet-Cookie: c=3\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"obs-text value", "HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"custom reason", "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"two spaces, trailing space", "HTTP/1.1  404 Not Found \r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"chunked with trailers", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status, X-Sum\r\n\r\n" +
		"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nGrpc-Status: 0\r\nx-sum: s\r\nX-Late: late\r\n\r\nNEXT", "POST", true},
	{"chunked, no trailers", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 99\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "GET", true},
	{"chunked, announced none sent", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-A\r\n\r\n0\r\n\r\n", "GET", true},
	{"chunked, trailer lines not CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\n\r\n", "GET", true},
	{"chunked, bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", "GET", true},
	{"chunked, truncated", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "GET", true},
	{"chunked, trailer truncated", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\r\n", "GET", true},
	{"chunked HEAD", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nTrailer: X-A\r\n\r\n", "HEAD", true},
	{"HEAD with length", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", "HEAD", true},
	{"HEAD without length", "HTTP/1.1 200 OK\r\n\r\n", "HEAD", true},
	{"204 with length", "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", "GET", true},
	{"304 chunked", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nEtag: \"x\"\r\n\r\n", "GET", true},
	{"100 Continue", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", "POST", true},
	{"103 Early Hints", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "GET", true},
	{"1.0 to the close", "HTTP/1.0 200 OK\r\n\r\nall of it", "GET", true},
	{"1.1 to the close", "HTTP/1.1 200 OK\r\n\r\nall of it", "GET", true},
	{"1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", "GET", true},
	{"1.1 close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok", "GET", true},
	{"1.2", "HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", true},
	{"same length twice", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length:  2 \r\n\r\nok", "GET", true},
	{"pragma", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"pragma with cache-control", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nCache-Control: max-age=1\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"trailer without chunking", "HTTP/1.1 200 OK\r\nTrailer: X-A\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"body truncated", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "GET", true},
	{"no request", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", "", true},
	{"long line", "HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("a", 40<<10) + "\r\nContent-Length: 0\r\n\r\n", "GET", true},
	{"status 000", "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", "GET", true},

	{"different lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "GET", false},
	{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "GET", false},
	{"signed length", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "GET", false},
	{"empty length", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", "GET", false},
	{"huge length", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "GET", false},
	{"1.0 chunked", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok", "GET", false},
	{"1.0 chunked, keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "GET", false},
	{"gzip encoding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "GET", false},
	{"two encodings", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", false},
	{"forbidden trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n0\r\n\r\n", "GET", false},
	{"garbage", "garbage\r\n\r\n", "GET", false},
	{"binary", "\x00\x01\x02\xff\r\n\r\n", "GET", false},
	{"bad code", "HTTP/1.1 abc OK\r\n\r\n", "GET", false},
	{"signed code", "HTTP/1.1 +99 OK\r\n\r\n", "GET", false},
	{"HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", "GET", false},
	{"control byte in the reason", "HTTP/1.1 200 O\x01K\r\n\r\n", "GET", false},
	{"no colon", "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "GET", false},
	{"space in a name", "HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n", "GET", false},
	{"space before the colon", "HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", "GET", false},
	{"folded", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", "GET", false},
	{"leading space", "HTTP/1.1 200 OK\r\n X-A: 1\r\n\r\n", "GET", false},
	{"CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", "GET", false},
	{"NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n", "GET", false},
	{"head truncated", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", "GET", false},
	{"nothing", "", "GET", false},
}

func TestReadResponseAsNetHTTP(t *testing.T) {
	for _, tc := range readCases {
		t.Run(tc.name, func(t *testing.T) {
			if got := compareRead(t, []byte(tc.raw), tc.method); got != tc.ok {
				t.Errorf("head taken: got %v, want %v", got, tc.ok)
			}
			compareWrite(t, []byte(tc.raw), tc.method, 1)
			compareWrite(t, []byte(tc.raw), tc.method, 0)
		})
	}
}

// TestReadResponseErrors: refusals name what is wrong.
func TestReadResponseErrors(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n", "obs-fold"},
		{"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"},
		{"HTTP/1.1 2000 OK\r\n\r\n", "malformed HTTP status code"},
		{"HTTP/1.1 200 OK\r\n", io.ErrUnexpectedEOF.Error()},
		{"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "faulty framing"},
	} {
		_, err := readResponse(bufio.NewReader(strings.NewReader(tc.raw)), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error with %q", tc.raw, err, tc.want)
		}
	}
	// Trailers longer than the reader's buffer.
	raw := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: " + strings.Repeat("a", readBufSize) + "\r\n\r\n"
	resp, err := readResponse(bufio.NewReaderSize(strings.NewReader(raw), readBufSize), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil || !strings.Contains(err.Error(), "trailers longer") {
		t.Errorf("long trailers: got %v, want an error", err)
	}
}

// FuzzResponseHead holds the parser to http.ReadResponse (what ours
// takes, net/http takes and reads alike; so what net/http refuses, ours
// refuses), and the writer to Response.Write on what net/http reads.
func FuzzResponseHead(f *testing.F) {
	for _, tc := range readCases {
		if len(tc.raw) < 4<<10 {
			f.Add([]byte(tc.raw), tc.method == http.MethodHead, false)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, head, http10 bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		compareRead(t, raw, method)
		minor := 1
		if http10 {
			minor = 0
		}
		compareWrite(t, raw, method, minor)
	})
}

func BenchmarkResponseRead(b *testing.B) {
	raw := []byte("HTTP/1.1 200 OK\r\n" +
		"Content-Type: application/json\r\n" +
		"Date: Fri, 04 Dec 2026 15:00:00 GMT\r\n" +
		"Server: envoy\r\n" +
		"X-Envoy-Upstream-Service-Time: 1\r\n" +
		"Vary: Accept-Encoding\r\n" +
		"Content-Length: 128\r\n\r\n" + strings.Repeat("x", 128))
	req := &http.Request{Method: http.MethodGet}
	src := bytes.NewReader(raw)
	rd := bufio.NewReaderSize(src, readBufSize)
	buf := make([]byte, 512)
	b.Run("ours", func(b *testing.B) {
		var p respReader
		b.ReportAllocs()
		for b.Loop() {
			src.Reset(raw)
			rd.Reset(src)
			// (As h1Conn: the response and its body's framing in one
			// allocation.)
			hb := new(struct {
				resp http.Response
				body respBody
			})
			resp := &hb.resp
			if err := p.read(rd, req, resp, &hb.body); err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := resp.Body.Read(buf); err != nil {
					break
				}
			}
		}
	})
	b.Run("net-http", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			src.Reset(raw)
			rd.Reset(src)
			resp, err := http.ReadResponse(rd, req)
			if err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := resp.Body.Read(buf); err != nil {
					break
				}
			}
		}
	})
}
