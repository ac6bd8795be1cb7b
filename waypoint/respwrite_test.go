package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The response head writer (respwrite.go) against net/http's
// Response.Write: the same bytes for the responses the waypoint writes.

// pieces is a body read in the given pieces, one per Read; at its end
// it sets trailers (late: as a chunked upstream body fills
// resp.Trailer when it ends).
type pieces struct {
	p       []string
	trailer http.Header
	late    http.Header
}

func (b *pieces) Read(p []byte) (int, error) {
	if len(b.p) == 0 {
		for k, vs := range b.late {
			b.trailer[k] = vs
		}
		b.late = nil
		return 0, io.EOF
	}
	n := copy(p, b.p[0])
	if n == len(b.p[0]) {
		b.p = b.p[1:]
	} else {
		b.p[0] = b.p[0][n:]
	}
	return n, nil
}

func (b *pieces) Close() error { return nil }

// writeCase is a response to write: made fresh for each writer.
type writeCase struct {
	name string
	make func() *http.Response
}

func mkResp(method string, reqMinor int, status int, length int64, body []string, h http.Header) func() *http.Response {
	return func() *http.Response {
		req := &http.Request{Method: method, ProtoMajor: 1, ProtoMinor: reqMinor}
		resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Request: req, ContentLength: length, Header: http.Header{}}
		for k, vs := range h {
			resp.Header[k] = append([]string(nil), vs...)
		}
		if body != nil {
			resp.Body = &pieces{p: append([]string(nil), body...)}
		}
		return resp
	}
}

// proxiedFraming sets the framing as h1Responder.proxied does.
func proxiedFraming(f func() *http.Response) func() *http.Response {
	return func() *http.Response {
		resp := f()
		if resp.ContentLength < 0 && resp.Request.ProtoAtLeast(1, 1) {
			resp.TransferEncoding = []string{"chunked"}
		}
		return resp
	}
}

func with(f func() *http.Response, edit func(*http.Response)) func() *http.Response {
	return func() *http.Response {
		resp := f()
		edit(resp)
		return resp
	}
}

var writeCases = []writeCase{
	{"length", mkResp("GET", 1, 200, 5, []string{"hello"}, http.Header{"Content-Type": {"text/plain"}})},
	{"length in pieces", mkResp("GET", 1, 200, 11, []string{"hello", " ", "world"}, nil)},
	{"unknown length, chunked", proxiedFraming(mkResp("GET", 1, 200, -1, []string{"hello", " world", strings.Repeat("x", 40<<10)}, http.Header{"X-A": {"1"}}))},
	{"chunked, empty", proxiedFraming(mkResp("GET", 1, 200, -1, []string{}, nil))},
	{"chunked with trailers", proxiedFraming(func() *http.Response {
		resp := mkResp("POST", 1, 200, -1, nil, http.Header{"Content-Type": {"application/grpc"}})()
		resp.Trailer = http.Header{"Grpc-Status": nil, "X-Sum": nil}
		resp.Body = &pieces{p: []string{"abc"}, trailer: resp.Trailer, late: http.Header{"Grpc-Status": {"0"}, "X-Sum": {"s1", "s2"}, "X-Late": {"late"}}}
		return resp
	})},
	{"chunked, trailers unannounced", proxiedFraming(func() *http.Response {
		resp := mkResp("GET", 1, 200, -1, nil, nil)()
		resp.Trailer = http.Header{}
		resp.Body = &pieces{p: []string{"abc"}, trailer: resp.Trailer, late: http.Header{"X-Late": {"late\r\nX-Evil: 1"}}}
		return resp
	})},
	{"HEAD, length", mkResp("HEAD", 1, 200, 100, []string{}, http.Header{"Etag": {`"x"`}})},
	{"HEAD, length 0", mkResp("HEAD", 1, 200, 0, []string{}, nil)},
	{"HEAD, unknown length", proxiedFraming(mkResp("HEAD", 1, 200, -1, []string{}, nil))},
	{"HEAD, 1.0", proxiedFraming(mkResp("HEAD", 0, 200, -1, []string{}, nil))},
	{"HEAD, 304", mkResp("HEAD", 1, 304, 0, []string{}, http.Header{"Etag": {`"x"`}})},
	{"HEAD, 304 with length", mkResp("HEAD", 1, 304, 10, []string{}, http.Header{"Etag": {`"x"`}})},
	{"204", mkResp("GET", 1, 204, 0, []string{}, http.Header{"X-A": {"1"}})},
	{"204, nil body", mkResp("DELETE", 1, 204, 0, nil, nil)},
	{"304", mkResp("GET", 1, 304, 0, []string{}, http.Header{"Etag": {`"x"`}, "Content-Type": {"text/html"}})},
	{"HTTP/1.0 request, unknown length", proxiedFraming(mkResp("GET", 0, 200, -1, []string{"hello", " world"}, nil))},
	{"HTTP/1.0 request, length", proxiedFraming(mkResp("GET", 0, 200, 5, []string{"hello"}, nil))},
	{"close", with(mkResp("GET", 1, 200, 2, []string{"ok"}, nil), func(r *http.Response) { r.Close = true })},
	{"close, chunked", with(proxiedFraming(mkResp("GET", 1, 200, -1, []string{"ok"}, nil)), func(r *http.Response) { r.Close = true })},
	{"close, already in Connection", with(mkResp("GET", 1, 200, 2, []string{"ok"}, http.Header{"Connection": {"keep-alive, Close"}}), func(r *http.Response) { r.Close = true })},
	{"close, closed in another token", with(mkResp("GET", 1, 200, 2, []string{"ok"}, http.Header{"Connection": {"closed"}}), func(r *http.Response) { r.Close = true })},
	{"multi-value headers, sorted", mkResp("GET", 1, 200, 0, nil, http.Header{
		"Set-Cookie": {"a=1", "b=2"}, "Vary": {"Accept", "Origin"}, "A": {"first"}, "Zz": {"last"}, "X-Envoy-Upstream-Service-Time": {"3"}, "x-lower": {"kept as is"},
	})},
	{"values with CR and LF", mkResp("GET", 1, 200, 0, nil, http.Header{
		"X-Split": {"a\r\nX-Evil: 1"}, "X-Lf": {"a\nb"}, "X-Cr": {"a\rb"}, "X-Trim": {"  \t padded \r\n"}, "X-Empty": {""}, "X-None": {},
	})},
	{"invalid names left out", mkResp("GET", 1, 200, 0, nil, http.Header{"Bad Name": {"1"}, "Bad:Colon": {"2"}, "": {"3"}, "Good": {"4"}})},
	{"framing fields in the header left out", mkResp("GET", 1, 200, 2, []string{"ok"}, http.Header{"Content-Length": {"99"}, "Transfer-Encoding": {"gzip"}, "Trailer": {"X"}})},
	{"upstream's reason phrase", with(mkResp("GET", 1, 200, 0, nil, nil), func(r *http.Response) { r.Status = "200 Fine" })},
	{"status text without the code", with(mkResp("GET", 1, 200, 0, nil, nil), func(r *http.Response) { r.Status = "Fine" })},
	{"status code only", with(mkResp("GET", 1, 200, 0, nil, nil), func(r *http.Response) { r.Status = "200" })},
	{"status with a trailing space", with(mkResp("GET", 1, 200, 0, nil, nil), func(r *http.Response) { r.Status = "200 " })},
	{"unknown status", mkResp("GET", 1, 599, 0, nil, nil)},
	{"two-digit status", mkResp("GET", 1, 99, 0, nil, nil)},
	{"four-digit status", mkResp("GET", 1, 1000, 0, nil, nil)},
	{"HTTP/1.0 response", with(mkResp("GET", 1, 200, -1, []string{"x"}, nil), func(r *http.Response) { r.ProtoMinor = 0 })},
	{"HTTP/1.0 response, chunked asked", with(proxiedFraming(mkResp("GET", 1, 200, -1, []string{"x"}, nil)), func(r *http.Response) { r.ProtoMinor = 0 })},
	{"length 0 but a body", mkResp("GET", 1, 200, 0, []string{"surprise"}, nil)},
	{"length 0, chunked asked, a body", with(mkResp("GET", 1, 200, 0, []string{"surprise"}, nil), func(r *http.Response) { r.TransferEncoding = []string{"chunked"} })},
	{"length 0, empty body", mkResp("GET", 1, 200, 0, []string{}, nil)},
	{"POST, length 0", mkResp("POST", 1, 200, 0, []string{}, nil)},
	{"PUT, nil body", mkResp("PUT", 1, 201, 0, nil, nil)},
	{"identity encoding", with(mkResp("DELETE", 1, 200, 0, []string{}, nil), func(r *http.Response) { r.TransferEncoding = []string{"identity"} })},
	{"body longer than its length", mkResp("GET", 1, 200, 3, []string{"hello"}, nil)},
	{"body shorter than its length", mkResp("GET", 1, 200, 9, []string{"hello"}, nil)},
	{"no request", with(mkResp("GET", 1, 404, 3, []string{"nop"}, nil), func(r *http.Response) { r.Request = nil })},
	{"invalid trailer", with(proxiedFraming(mkResp("GET", 1, 200, -1, []string{"x"}, nil)), func(r *http.Response) { r.Trailer = http.Header{"Content-Length": nil} })},
	{"trailer names canonicalised", with(proxiedFraming(mkResp("GET", 1, 200, -1, []string{"x"}, nil)), func(r *http.Response) {
		r.Trailer = http.Header{"x-b": {"1"}, "X-A": {"2"}}
	})},
}

// netHTTPWrite is what net/http writes of resp, and its error.
func netHTTPWrite(resp *http.Response) (string, error) {
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	err := resp.Write(writerOnly{bw})
	bw.Flush()
	return b.String(), err
}

// ourWrite is what writeResponse writes of resp.
func ourWrite(resp *http.Response) (string, bool, error) {
	var b bytes.Buffer
	bw := bufio.NewWriterSize(&b, respBufSize)
	closeConn, err := writeResponse(bw, resp)
	bw.Flush()
	return b.String(), closeConn, err
}

func TestWriteResponseAsNetHTTP(t *testing.T) {
	for _, tc := range writeCases {
		t.Run(tc.name, func(t *testing.T) {
			want, wantErr := netHTTPWrite(tc.make())
			got, closeConn, err := ourWrite(tc.make())
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("error: got %v, want %v", err, wantErr)
			}
			if err != nil {
				return // (what went out before the error may differ)
			}
			if got != want {
				t.Errorf("bytes:\ngot  %q\nwant %q", got, want)
			}
			// The connection closes after it when the response says so,
			// or net/http's head does (a body to the close).
			head, _, _ := strings.Cut(want, "\r\n\r\n")
			if wantClose := tc.make().Close || strings.Contains(head+"\r\n", "\r\nConnection: close\r\n"); closeConn != wantClose {
				t.Errorf("close after it: got %v, want %v", closeConn, wantClose)
			}
		})
	}
}

// TestWriteResponseNoBodyStatus: where the writer differs from
// Response.Write on purpose, a status without a body gets no framing.
func TestWriteResponseNoBodyStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func() *http.Response
		want string
	}{
		{"204 to POST", mkResp("POST", 1, 204, 0, []string{}, http.Header{"X-A": {"1"}}),
			"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"},
		{"204, length unknown", proxiedFraming(mkResp("GET", 1, 204, -1, []string{}, nil)),
			"HTTP/1.1 204 No Content\r\n\r\n"},
		{"304, length unknown, HTTP/1.0", proxiedFraming(mkResp("GET", 0, 304, -1, []string{}, http.Header{"Etag": {`"x"`}})),
			"HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\n\r\n"},
		{"304 with a length", mkResp("GET", 1, 304, 10, []string{}, nil),
			"HTTP/1.1 304 Not Modified\r\n\r\n"},
		{"103", mkResp("GET", 1, 103, 0, nil, http.Header{"Link": {"</a>"}}),
			"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"},
		{"204, close", with(mkResp("GET", 1, 204, 0, []string{}, nil), func(r *http.Response) { r.Close = true }),
			"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := ourWrite(tc.make())
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// oldWriteLocal is writeLocal as it was, through Response.Write.
func oldWriteLocal(req *http.Request, status int, body string, h http.Header, closeConn bool) string {
	resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Request: req, Close: closeConn}
	for k, vs := range h {
		resp.Header[k] = vs
	}
	if body != "" {
		resp.Header.Set("Content-Type", "text/plain")
		resp.Body = io.NopCloser(strings.NewReader(body))
	}
	resp.ContentLength = int64(len(body))
	var b bytes.Buffer
	resp.Write(&b)
	return b.String()
}

func TestWriteLocalAsNetHTTP(t *testing.T) {
	get := &http.Request{Method: "GET"}
	post := &http.Request{Method: "POST"}
	head := &http.Request{Method: "HEAD"}
	for _, tc := range []struct {
		name   string
		req    *http.Request
		status int
		body   string
		h      http.Header
		close  bool
	}{
		{"403 RBAC", get, 403, "RBAC: access denied", nil, false},
		{"503, no body", get, 503, "", nil, false},
		{"503, close", get, 503, "", nil, true},
		{"426, close", get, 426, "", nil, true},
		{"400, no request", nil, 400, "Bad Request", nil, true},
		{"POST, no body", post, 503, "", nil, false},
		{"POST, body", post, 403, "denied", nil, false},
		{"HEAD, body", head, 403, "denied", nil, false},
		{"HEAD, no body", head, 503, "", nil, false},
		{"headers", get, 429, "local_rate_limited", http.Header{"X-Ratelimit-Limit": {"10"}, "Retry-After": {"1"}, "Content-Type": {"application/json"}}, false},
		{"content type kept without a body", get, 200, "", http.Header{"Content-Type": {"application/grpc"}, "Grpc-Status": {"14"}, "Grpc-Message": {"no healthy upstream\r\nX: 1"}}, false},
		{"redirect", get, 301, "", http.Header{"Location": {"https://example.com/"}}, false},
		{"connection close already there", get, 503, "", http.Header{"Connection": {"close"}}, true},
		{"unknown status", get, 599, "x", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := oldWriteLocal(tc.req, tc.status, tc.body, tc.h, tc.close)
			var b bytes.Buffer
			if err := writeLocal(&b, tc.req, tc.status, tc.body, tc.h, tc.close); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != want {
				t.Errorf("got  %q\nwant %q", got, want)
			}
		})
	}
	// A status without a body: no framing, no body (respwrite.go).
	var b bytes.Buffer
	if err := writeLocal(&b, post, 204, "", nil, false); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "HTTP/1.1 204 No Content\r\n\r\n"; got != want {
		t.Errorf("204 to POST: got %q, want %q", got, want)
	}
}

// TestWriteKeepAlive10: an HTTP/1.0 client that asked for keep-alive is
// told "Connection: keep-alive" when a length keeps its connection
// open, by the proxied answer's writer and by the waypoint's own.
func TestWriteKeepAlive10(t *testing.T) {
	keep := &http.Request{Method: "GET", ProtoMajor: 1, ProtoMinor: 0}
	for _, tc := range []struct {
		name    string
		resp    func() *http.Response
		want    string // the head
		closing bool
	}{
		{"length", mkResp("GET", 0, 200, 2, []string{"ok"}, nil),
			"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", false},
		{"length 0", mkResp("GET", 0, 200, 0, []string{}, http.Header{"X-A": {"1"}}),
			"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n", false},
		{"HEAD, length", mkResp("HEAD", 0, 200, 9, []string{}, nil),
			"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\n", false},
		{"already said", mkResp("GET", 0, 200, 2, []string{"ok"}, http.Header{"Connection": {"Keep-Alive"}}),
			"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive\r\n\r\n", false},
		{"unknown length: to the close", mkResp("GET", 0, 200, -1, []string{"ok"}, nil),
			"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n", true},
		{"upstream closes", with(mkResp("GET", 0, 200, 2, []string{"ok"}, nil), func(r *http.Response) { r.Close = true }),
			"HTTP/1.0 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", true},
		{"204: no length, so closed", mkResp("GET", 0, 204, 0, []string{}, nil),
			"HTTP/1.0 204 No Content\r\nConnection: close\r\n\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			bw := bufio.NewWriter(&b)
			closing, err := writeResponseTo(bw, tc.resp(), keep)
			bw.Flush()
			if err != nil {
				t.Fatal(err)
			}
			head, _, _ := strings.Cut(b.String(), "\r\n\r\n")
			if got := head + "\r\n\r\n"; got != tc.want || closing != tc.closing {
				t.Errorf("got %q (close %v), want %q (close %v)", got, closing, tc.want, tc.closing)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		status int
		body   string
		close  bool
		want   string
	}{
		{"403", 403, "denied", false, "HTTP/1.0 403 Forbidden\r\nConnection: keep-alive\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\ndenied"},
		{"503, no body", 503, "", false, "HTTP/1.0 503 Service Unavailable\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"},
		{"503, close", 503, "", true, "HTTP/1.0 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"},
		{"204", 204, "", false, "HTTP/1.0 204 No Content\r\n\r\n"},
	} {
		t.Run("local "+tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeLocal(&b, keep, tc.status, tc.body, nil, tc.close); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestWriteHeaderLinesAsNetHTTP: a 101's fields (switchProtocols) as
// Header.Write writes them.
func TestWriteHeaderLinesAsNetHTTP(t *testing.T) {
	h := http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Accept": {"abc="}, "X-B": {"2", " 3 "}, "X-A": {"a\r\nb"}, "Bad Name": {"x"}, "Content-Length": {"0"}}
	var want bytes.Buffer
	h.Write(&want)
	var got bytes.Buffer
	bw := bufio.NewWriter(&got)
	writeHeaderLines(bw, h, false, "")
	bw.Flush()
	if got.String() != want.String() {
		t.Errorf("got  %q\nwant %q", got.String(), want.String())
	}
}

func BenchmarkResponseWrite(b *testing.B) {
	h := http.Header{
		"Content-Type":                  {"application/json"},
		"Date":                          {"Fri, 04 Dec 2026 15:00:00 GMT"},
		"Server":                        {"istio-envoy"},
		"X-Envoy-Upstream-Service-Time": {"1"},
		"Vary":                          {"Accept-Encoding"},
	}
	body := strings.Repeat("x", 128)
	run := func(b *testing.B, write func(*bufio.Writer, *http.Response)) {
		bw := bufio.NewWriterSize(io.Discard, respBufSize)
		req := &http.Request{Method: "GET", ProtoMajor: 1, ProtoMinor: 1}
		rd := strings.NewReader(body)
		rc := io.NopCloser(rd)
		b.ReportAllocs()
		for b.Loop() {
			rd.Reset(body)
			resp := http.Response{StatusCode: 200, Status: "200 OK", ProtoMajor: 1, ProtoMinor: 1, Header: h, Request: req, ContentLength: int64(len(body)), Body: rc}
			write(bw, &resp)
		}
	}
	b.Run("ours", func(b *testing.B) {
		run(b, func(bw *bufio.Writer, resp *http.Response) { writeResponse(bw, resp) })
	})
	b.Run("net-http", func(b *testing.B) {
		run(b, func(bw *bufio.Writer, resp *http.Response) { resp.Write(writerOnly{bw}) })
	})
}
