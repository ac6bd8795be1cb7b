package waypoint

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The waypoint's own HTTP/1.1 response head writer, for what it sends
// downstream (proxied answers, local replies, a 101). It writes what
// net/http's Response.Write writes, byte for byte: the same status
// line, framing and header order, values cleaned the same way. What it
// leaves out is the cost (docs/performance.md, "The waypoint's own
// HTTP/1 response head"): Response.Write copies the response, formats
// the status line with fmt, builds a transferWriter, sorts the header
// keys in a pooled sorter and copies each cleaned value through a
// strings.Replacer; here the keys sort in an array on the stack and
// everything is written straight into the caller's buffer.
//
// Where it differs from Response.Write, on purpose: a status that has
// no body (1xx, 204, 304) answering anything but HEAD gets no framing
// at all. Response.Write writes "Content-Length: 0" on such an answer
// to POST, PUT or PATCH (which RFC 9110 forbids on a 204), and, for one
// whose length is unknown (an HTTP/2 upstream's 204 without END_STREAM
// on its headers), chunked framing and a last chunk, or a body until
// the close, which the client would read as the start of the next
// response.

// writeResponse writes resp (head, body, trailers) on w as Response.Write
// does, except as said above. closeConn reports whether the connection
// must close after it: resp.Close, or a body only the close can end
// (its length unknown and no chunking: an HTTP/1.0 request, or a
// response that is not HTTP/1.1). The body is closed.
func writeResponse(w *bufio.Writer, resp *http.Response) (closeConn bool, err error) {
	return writeResponseTo(w, resp, nil)
}

// writeResponseTo is writeResponse answering req, a client's request
// that may be HTTP/1.0 (nil: an HTTP/1.1 client). An HTTP/1.0 client
// gets an HTTP/1.0 status line, as Envoy's codec answers one when
// accept_http_10 lets it in (the waypoint refuses HTTP/1.0 otherwise).
// One that asked to keep the connection ("Connection: keep-alive") is
// told "Connection: keep-alive" if the connection stays open after this
// answer (which a Content-Length frames), without which an HTTP/1.0
// client closes it: Envoy's connection manager and net/http's server
// answer such a client so. An answer with no length (a 204 or 304) ends
// such a client's connection, as Envoy's connection manager ends it.
func writeResponseTo(w *bufio.Writer, resp *http.Response, req *http.Request) (closeConn bool, err error) {
	major, minor := resp.ProtoMajor, resp.ProtoMinor
	if is10(req) {
		major, minor = 1, 0
	}
	keepAlive10 := keepAlive10(req)
	writeStatusLine(w, major, minor, resp.StatusCode, resp.Status)
	method := ""
	if resp.Request != nil {
		method = resp.Request.Method
	}
	head := method == http.MethodHead
	closing := resp.Close
	if !head && !statusHasBody(resp.StatusCode) {
		// No length either: an HTTP/1.0 client's connection ends here,
		// as Envoy's connection manager ends one when the answer has no
		// Content-Length.
		closing = closing || keepAlive10
		if resp.Body != nil {
			resp.Body.Close()
		}
		if closing && !listHasToken(firstValue(resp.Header, "Connection"), "close") {
			w.WriteString("Connection: close\r\n")
		}
		writeHeaderLines(w, resp.Header, true, "")
		_, err := w.WriteString("\r\n")
		return closing, err
	}

	// As Response.Write: a body of length 0 is read once to tell an
	// empty one from one of unknown length.
	var body io.Reader
	if resp.Body != nil {
		body = resp.Body
	}
	cl := resp.ContentLength
	var first []byte // the byte read ahead
	if cl == 0 && body != nil {
		one := make([]byte, 1)
		n, err := body.Read(one)
		if err != nil && err != io.EOF {
			return closing, err
		}
		if n == 0 {
			body = http.NoBody
		} else {
			cl, first = -1, one
		}
	}
	at11 := resp.ProtoAtLeast(1, 1)
	if cl == -1 && !closing && at11 && !isChunkedTE(resp.TransferEncoding) && !resp.Uncompressed {
		closing = true
	}

	// The framing (net/http's transferWriter).
	tBody, tLen, tEnc, trailer := body, cl, resp.TransferEncoding, resp.Trailer
	if head {
		tBody = nil
		if isChunkedTE(tEnc) {
			tLen = -1
		}
	} else {
		if !at11 || tBody == nil {
			tEnc = nil
		}
		if isChunkedTE(tEnc) {
			tLen = -1
		} else if tBody == nil {
			tLen = 0
		}
	}
	chunked := isChunkedTE(tEnc)
	if !chunked {
		trailer = nil
	}
	sendLen := shouldSendContentLength(chunked, tLen, method, tEnc)
	// (Or "Content-Length: 0" after the fields.)
	zeroLen := cl == 0 && !isChunkedTE(resp.TransferEncoding) && !sendLen && statusHasBody(resp.StatusCode)
	switch conn := firstValue(resp.Header, "Connection"); {
	case closing && !listHasToken(conn, "close"):
		w.WriteString("Connection: close\r\n")
	case !closing && keepAlive10 && (sendLen || zeroLen) && !listHasToken(conn, "keep-alive"):
		w.WriteString("Connection: keep-alive\r\n")
	}
	if sendLen {
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), tLen, 10))
		w.WriteString("\r\n")
	} else if chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if trailer != nil {
		if err := writeTrailerHeader(w, trailer); err != nil {
			return closing, err
		}
	}
	writeHeaderLines(w, resp.Header, true, "")
	if zeroLen {
		w.WriteString("Content-Length: 0\r\n")
	}
	if _, err := w.WriteString("\r\n"); err != nil {
		return closing, err
	}

	var n int64
	if !head && tBody != nil {
		limit := tLen
		if chunked {
			limit = -1
		}
		n, err = copyBody(w, tBody, first, chunked, limit)
		if err == nil && chunked {
			_, err = w.WriteString("0\r\n")
		}
		if err != nil {
			if resp.Body != nil {
				resp.Body.Close()
			}
			return closing, err
		}
	}
	if resp.Body != nil {
		if err := resp.Body.Close(); err != nil {
			return closing, err
		}
	}
	if !head && tLen != -1 && tLen != n {
		return closing, fmt.Errorf("write response: Content-Length %d with a body of %d bytes", tLen, n)
	}
	if !head && chunked {
		writeHeaderLines(w, trailer, false, "")
		_, err = w.WriteString("\r\n")
	}
	return closing, err
}

// writeStatusLine writes "HTTP/1.1 200 OK": status's text after its
// code, else Go's reason phrase for code.
func writeStatusLine(w *bufio.Writer, major, minor, code int, status string) {
	if major == 1 && minor == 1 {
		w.WriteString("HTTP/1.1 ")
	} else {
		w.WriteString("HTTP/")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(major), 10))
		w.WriteByte('.')
		w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(minor), 10))
		w.WriteByte(' ')
	}
	// (digits only compared: written from w's own buffer, it stays on
	// the stack.)
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], int64(code), 10)
	if code >= 0 && code < 1000 {
		for i := len(d); i < 3; i++ {
			w.WriteByte('0')
		}
		w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(code), 10))
	} else {
		fmt.Fprintf(w, "%03d", code)
	}
	w.WriteByte(' ')
	switch {
	case status == "":
		if text := http.StatusText(code); text != "" {
			w.WriteString(text)
		} else {
			w.WriteString("status code ")
			w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(code), 10))
		}
	case len(status) > len(d) && status[len(d)] == ' ' && status[:len(d)] == string(d):
		w.WriteString(status[len(d)+1:])
	default:
		w.WriteString(status)
	}
	w.WriteString("\r\n")
}

// shouldSendContentLength is net/http's choice of a Content-Length
// header for a body of length n (-1: unknown) with encodings enc.
func shouldSendContentLength(chunked bool, n int64, method string, enc []string) bool {
	switch {
	case chunked:
		return false
	case n > 0:
		return true
	case n < 0:
		return false
	case method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch:
		// Many clients want a length on these.
		return true
	case len(enc) == 1 && enc[0] == "identity":
		return method != http.MethodGet && method != http.MethodHead
	}
	return false
}

// writeTrailerHeader announces the trailers: "Trailer: " and their
// names, sorted.
func writeTrailerHeader(w *bufio.Writer, trailer http.Header) error {
	var arr [8]string
	keys := arr[:0]
	for k := range trailer {
		k = http.CanonicalHeaderKey(k)
		switch k {
		case "Transfer-Encoding", "Trailer", "Content-Length":
			return fmt.Errorf("write response: invalid trailer %q", k)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	w.WriteString("Trailer: ")
	for i, k := range keys {
		if i > 0 {
			w.WriteByte(',')
		}
		w.WriteString(k)
	}
	_, err := w.WriteString("\r\n")
	return err
}

// writeHeaderLines writes h's fields sorted by name, as net/http's
// Header.Write: names that are not tokens left out, CR and LF in a
// value turned into spaces and the value trimmed. excludeFraming leaves
// out Content-Length, Transfer-Encoding and Trailer (written with the
// framing); contentType, when set, is the Content-Type's one value,
// whatever h holds.
func writeHeaderLines(w *bufio.Writer, h http.Header, excludeFraming bool, contentType string) {
	// (In an array on the stack while the header has at most its
	// length of fields: sorting allocates nothing.)
	var arr [32]string
	keys := arr[:0]
	for k := range h {
		if excludeFraming && (k == "Content-Length" || k == "Transfer-Encoding" || k == "Trailer") {
			continue
		}
		if contentType != "" && k == "Content-Type" {
			continue
		}
		keys = append(keys, k)
	}
	if contentType != "" {
		keys = append(keys, "Content-Type")
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		if contentType != "" && k == "Content-Type" {
			writeField(w, k, contentType)
			continue
		}
		for _, v := range h[k] {
			writeField(w, k, v)
		}
	}
}

// writeField writes "k: v\r\n", v trimmed of spaces, tabs, CRs and LFs
// and any CR or LF inside it a space.
func writeField(w *bufio.Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	for len(v) > 0 && isOWSCRLF(v[0]) {
		v = v[1:]
	}
	for len(v) > 0 && isOWSCRLF(v[len(v)-1]) {
		v = v[:len(v)-1]
	}
	for {
		i := strings.IndexAny(v, "\r\n")
		if i < 0 {
			break
		}
		w.WriteString(v[:i])
		w.WriteByte(' ')
		v = v[i+1:]
	}
	w.WriteString(v)
	w.WriteString("\r\n")
}

func isOWSCRLF(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\n' }

// copyBody copies a response's body after its head: first (a byte read
// ahead), then src, each read as one chunk when chunked. With limit >= 0
// at most limit bytes go out, the rest is read and counted (as
// Response.Write does, so that a body longer than its length is an
// error). It reads into a buffer of its own, never w's (the body's
// Read may flush w: flushingBody).
func copyBody(w *bufio.Writer, src io.Reader, first []byte, chunked bool, limit int64) (n int64, err error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		var m int
		var rerr error
		if len(first) > 0 {
			m = copy(buf, first)
			first = nil
		} else {
			m, rerr = src.Read(buf)
		}
		if m > 0 {
			out := buf[:m]
			if limit >= 0 {
				if left := limit - n; left < int64(m) {
					out = out[:max(left, 0)]
				}
			}
			n += int64(m)
			if len(out) > 0 {
				if chunked {
					w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(len(out)), 16))
					w.WriteString("\r\n")
				}
				_, werr := w.Write(out)
				if werr == nil && chunked {
					_, werr = w.WriteString("\r\n")
				}
				if werr != nil {
					return n, werr
				}
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// statusHasBody: the status may have a body (RFC 9110 section
// 6.4.1: not 1xx, 204 or 304).
func statusHasBody(status int) bool {
	return !(status >= 100 && status <= 199 || status == http.StatusNoContent || status == http.StatusNotModified)
}

func isChunkedTE(enc []string) bool { return len(enc) > 0 && enc[0] == "chunked" }

func firstValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// listHasToken: v, a comma-separated list, holds token (lower case),
// compared without case, as net/http's.
func listHasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isListBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isListBoundary(v[end]) {
			continue
		}
		if asciiEqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isListBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }
