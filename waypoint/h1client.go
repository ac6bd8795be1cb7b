package waypoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/ambitmesh/ambit/internal/hbone"
)

// h1Conn is one HTTP/1.1 connection to an upstream, the client side of
// the per-cluster pools' HTTP/1 connections (connpool.go). It replaces
// net/http's ClientConn there because of what that costs per request
// on the waypoint's path (docs/performance.md, "the waypoint's own
// HTTP/1 client"): a writing and a reading goroutine per connection,
// so two hand-offs and a select each way, the request cloned and its
// head formatted with fmt, the response parsed by a goroutine that is
// not the request's.
//
// Here the request's goroutine does it all: it writes the head, and a
// body in memory of up to holdMax bytes, into one buffer and flushes
// once (on an HBONE stream each flush is a DATA frame, a TLS record
// and a write), then reads the response head from a pooled reader; the
// response body is read by whoever reads the returned body. A body not
// in memory (large, chunked, or still arriving) is written by a
// goroutine of its own while the response is read, as net/http does,
// so that an upstream answering before it has read the whole body is
// seen.
//
// An idle connection is read by nobody, until it has been idle for
// idleWatchAfter: then a goroutine waits on it for one byte, so that an
// upstream closing it (as idle) is seen and the pool drops it, as
// net/http's reading goroutine sees it, instead of a request finding
// out. Under load connections are never idle that long and no such
// goroutine runs; a request that takes a watched connection writes,
// then takes the watcher's byte as the first of its answer. A request
// that finds its kept-alive connection closed all the same (the close
// was on its way) gets errClosedBeforeResponse, which Proxy.roundTrip
// sends once more on another connection when the request may be sent
// twice.
//
// Concurrency: the pool gives a connection to one request at a time
// (streamLimit 1); the request owns rd, bw and the connection until its
// body is closed. mu guards state and watched, between the request and
// the watcher; broken is read by the pool at any time. A try's context
// ending closes the connection (HBONE streams have no deadlines), which
// interrupts a blocked read or write; the error returned is then the
// context's.
//
// Behaviour kept from the ClientConn it replaces: no User-Agent and no
// Accept-Encoding added (the transport had compression off; net/http
// would add "Go-http-client/1.1" where the client sent no User-Agent,
// Envoy adds none, neither does this); Content-Length as net/http
// sends it (also 0 for POST, PUT and PATCH without a body), else
// chunked, with the request's trailers after a chunked body; an
// "Expect: 100-continue" request's body sent at once (the transport had
// no ExpectContinueTimeout) and 1xx answers other than 101 skipped;
// response heads parsed as http.ReadResponse parses them (respread.go,
// its own parser, held to ReadResponse by a differential fuzz target),
// so chunked bodies and their trailers (resp.Trailer, filled when the
// body ends), HEAD, 204 and 304 are as before.
type h1Conn struct {
	conn net.Conn
	host string // for errors
	// lim counts what a response head may still read (maxResponseHead).
	lim limitReader
	// head reads the response heads (its scratch kept for the next).
	head respReader
	// served is the requests sent on the connection.
	served int
	// bodyRead: the body writer has read the request's body to its end
	// (what is left is its last write).
	bodyRead atomic.Bool
	broken   atomic.Bool
	// cancelled: the exchange in progress was ended because its request
	// was cancelled (reset for each).
	cancelled atomic.Bool
	once      sync.Once
	// onBroken tells the pool the connection ended while idle.
	onBroken func()

	mu    sync.Mutex
	state connState
	watch *time.Timer
	// watched: the watcher's end (nil: a byte read, in lim.one).
	watched chan error
}

type connState uint8

const (
	connIdle connState = iota
	connWatched
	connBusy
)

// idleWatchAfter is how long a connection is idle before a goroutine
// waits on it for the upstream's close.
const idleWatchAfter = 200 * time.Millisecond

// errUnsolicited: the upstream sent bytes with no request outstanding.
var errUnsolicited = errors.New("upstream sent data on an idle connection")

// maxResponseHead bounds a response head (status line, headers, and
// 1xx heads before it): Envoy's default max_response_headers_kb.
const maxResponseHead = 60 << 10

// errResponseHead: a response head larger than maxResponseHead.
var errResponseHead = fmt.Errorf("response head larger than %d bytes", maxResponseHead)

// errClosedBeforeResponse: the upstream ended the connection before a
// byte of the response (on a kept-alive connection, usually because it
// closed it as idle while the request was on its way).
var errClosedBeforeResponse = errors.New("upstream closed the connection before the response")

// closedBeforeResponse reports whether err, reading a response of which
// nothing has come, is the upstream ending the connection: a close
// (EOF), a reset (ECONNRESET), or, through a tunnel, its stream reset by
// the far end, which the destination's ztunnel does when its side to
// the pod fails (as a request written after the pod closed a kept-alive
// connection makes it fail). A reset of the waypoint's own (a
// cancellation) is not.
func closedBeforeResponse(err error) bool {
	var reset *hbone.ResetError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || (errors.As(err, &reset) && reset.Remote)
}

func newH1Conn(c net.Conn, host string, onBroken func()) *h1Conn {
	h := &h1Conn{conn: c, host: host, onBroken: onBroken}
	h.lim.r = c
	h.watch = time.AfterFunc(idleWatchAfter, h.watchIdle)
	return h
}

// idle marks the connection free for the next request.
func (c *h1Conn) idle() {
	c.mu.Lock()
	c.state = connIdle
	c.watch.Reset(idleWatchAfter)
	c.mu.Unlock()
}

// watchIdle waits for the upstream's next byte or close on an idle
// connection.
func (c *h1Conn) watchIdle() {
	c.mu.Lock()
	if c.state != connIdle || c.broken.Load() {
		c.mu.Unlock()
		return
	}
	c.state = connWatched
	ch := make(chan error, 1)
	c.watched = ch
	c.mu.Unlock()
	var err error
	for {
		var n int
		n, err = c.conn.Read(c.lim.one[:])
		if n == 1 {
			c.lim.has, err = true, nil
			break
		}
		if err != nil {
			break
		}
	}
	c.mu.Lock()
	taken := c.state == connBusy
	c.mu.Unlock()
	if err == nil && !taken {
		err = errUnsolicited
	}
	if err != nil {
		c.Close()
		if !taken && c.onBroken != nil {
			c.onBroken()
		}
	}
	ch <- err
}

// limitReader reads the connection; while n >= 0 it bounds what may be
// read (a response head).
type limitReader struct {
	r    io.Reader
	n    int64
	read int64 // bytes read since the head began
	// one is the idle watcher's byte, when has.
	one [1]byte
	has bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.has && len(p) > 0 {
		l.has = false
		p[0] = l.one[0]
		l.read++
		if l.n > 0 {
			l.n--
		}
		return 1, nil
	}
	if l.n >= 0 {
		if l.n == 0 {
			return 0, errResponseHead
		}
		if int64(len(p)) > l.n {
			p = p[:l.n]
		}
	}
	n, err := l.r.Read(p)
	if l.n >= 0 {
		l.n -= int64(n)
	}
	l.read += int64(n)
	return n, err
}

// Err is non-nil once the connection can carry no more requests.
func (c *h1Conn) Err() error {
	if c.broken.Load() {
		return net.ErrClosed
	}
	return nil
}

// Reserve: the pool hands the connection to one request at a time.
func (c *h1Conn) Reserve() error { return c.Err() }

// Close ends the connection.
func (c *h1Conn) Close() error {
	c.broken.Store(true)
	c.watch.Stop()
	var err error
	c.once.Do(func() { err = c.conn.Close() })
	return err
}

// readers pools the response readers; a connection holds one only
// while a response is read.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// releaseWriter gives a request's write buffer back to the pool.
func releaseWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	respWriters.Put(bw)
}

// memBody is a request body whole in memory (a try's replayed body).
type memBody struct {
	b   []byte
	off int
}

func (m *memBody) Read(p []byte) (int, error) {
	if m.off >= len(m.b) {
		return 0, io.EOF
	}
	n := copy(p, m.b[m.off:])
	m.off += n
	return n, nil
}

func (m *memBody) Close() error { return nil }

// RoundTrip sends req on the connection and reads the answer's head;
// the answer's body holds the connection until it is closed.
func (c *h1Conn) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	c.served++
	c.mu.Lock()
	c.state = connBusy
	c.watch.Stop()
	watched := c.watched
	c.watched = nil
	c.mu.Unlock()
	ctx := req.Context()
	c.cancelled.Store(false)
	w := c.watchCancel(ctx)
	fail := func(err error) (*http.Response, error) {
		w.release()
		c.Close()
		if c.cancelled.Load() || ctx.Err() != nil {
			return nil, fmt.Errorf("upstream %s: %w", c.host, ctx.Err())
		}
		return nil, err
	}
	bw := getWriter(c.conn)
	mem, inline := req.Body.(*memBody)
	inline = req.Body == nil || inline && len(mem.b)-mem.off <= holdMax
	chunked, err := writeHead(bw, req)
	if err != nil {
		releaseWriter(bw)
		return fail(err)
	}
	var wrote chan error // the body writer's end, when it has one
	c.bodyRead.Store(false)
	if inline {
		if mem != nil {
			if chunked {
				err = writeChunk(bw, mem.b[mem.off:])
				if err == nil {
					err = endChunked(bw, req.Trailer)
				}
			} else {
				_, err = bw.Write(mem.b[mem.off:])
			}
		}
		if err == nil {
			err = bw.Flush()
		}
		releaseWriter(bw)
		if err != nil {
			return fail(fmt.Errorf("write request to %s: %w", c.host, err))
		}
	} else {
		wrote = make(chan error, 1)
		go func() {
			err := writeBody(bw, req.Body, chunked, req.ContentLength, req.Trailer, &c.bodyRead)
			releaseWriter(bw)
			if err != nil {
				c.Close() // the request is incomplete: so is the exchange
			}
			wrote <- err
		}()
	}
	if watched != nil {
		if err := <-watched; err != nil {
			if wrote != nil {
				c.Close()
			}
			return fail(fmt.Errorf("%w (%s): %w", errClosedBeforeResponse, c.host, err))
		}
	}
	rd := readers.Get().(*bufio.Reader)
	c.lim.n, c.lim.read = maxResponseHead, 0
	rd.Reset(&c.lim)
	b := &h1Body{c: c, rd: rd, watch: w, ctx: ctx, wrote: wrote}
	for {
		resp = &b.resp
		if err = c.head.read(rd, req, resp, &b.body); err != nil {
			rd.Reset(nil)
			readers.Put(rd)
			if c.lim.read == 0 && closedBeforeResponse(err) {
				err = fmt.Errorf("%w (%s): %w", errClosedBeforeResponse, c.host, err)
			} else {
				err = fmt.Errorf("read response from %s: %w", c.host, err)
			}
			if wrote != nil {
				select {
				case werr := <-wrote:
					if werr != nil && c.lim.read == 0 && !c.cancelled.Load() {
						err = fmt.Errorf("write request to %s: %w", c.host, werr)
					}
				default:
				}
			}
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// (A 1xx has no body.)
	}
	c.lim.n = -1
	b.reuse = !resp.Close && resp.ProtoAtLeast(1, 1)
	b.eof = resp.Body == http.NoBody
	resp.Body = b
	return resp, nil
}

// cancelWatch ends an exchange's connection if its request is
// cancelled: through the request's streamTimer where the try's context
// is it (a field set, no allocation), else context.AfterFunc.
type cancelWatch struct {
	st   *streamTimer
	c    *h1Conn
	stop func() bool
}

func (c *h1Conn) watchCancel(ctx context.Context) cancelWatch {
	if di, ok := ctx.Value(dialKey{}).(*dialInfo); ok && di.st != nil {
		if !di.st.setAbort(c) {
			c.abort() // cancelled already
		}
		return cancelWatch{st: di.st, c: c}
	}
	return cancelWatch{stop: context.AfterFunc(ctx, c.abort)}
}

// release ends the watch; false if the request was cancelled while it
// ran (its connection is ended, or being).
func (w cancelWatch) release() bool {
	if w.st != nil {
		return w.st.clearAbort(w.c)
	}
	return w.stop()
}

// abort ends the exchange of a cancelled request.
func (c *h1Conn) abort() {
	c.cancelled.Store(true)
	c.Close()
}

// h1Body is a response's body; closing it gives the connection back
// (reusable: the body read to its end, no "Connection: close", the
// request written whole) or ends it.
type h1Body struct {
	c *h1Conn
	// resp is the response; body reads its bytes as its head framed
	// them.
	resp   http.Response
	body   respBody
	rd     *bufio.Reader
	watch  cancelWatch
	ctx    context.Context
	wrote  chan error
	reuse  bool
	eof    bool
	closed bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.reuse = false
		if b.c.cancelled.Load() || b.ctx.Err() != nil {
			err = fmt.Errorf("upstream %s: %w", b.c.host, b.ctx.Err())
		} else {
			err = fmt.Errorf("read response body from %s: %w", b.c.host, err)
		}
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	written := true
	if b.wrote != nil {
		// An answer read whole while the writer makes its last write
		// (the upstream answered as the body's end reached it) waits for
		// that write, which the try's context can still end; a body
		// still being read from the client is not waited for.
		if b.eof && b.c.bodyRead.Load() {
			written = <-b.wrote == nil
		} else {
			select {
			case err := <-b.wrote:
				written = err == nil
			default:
				written = false
			}
		}
	}
	reuse := b.watch.release() && written && b.reuse && b.eof && b.rd.Buffered() == 0
	if reuse {
		b.c.idle()
	} else {
		b.c.Close()
	}
	b.rd.Reset(nil)
	readers.Put(b.rd)
	b.rd = nil
	return nil
}

// writeHead writes req's head to w; chunked: the body goes chunked.
func writeHead(w *bufio.Writer, req *http.Request) (chunked bool, err error) {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !httpguts.ValidHeaderFieldName(method) {
		return false, fmt.Errorf("invalid method %q", method)
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !isASCII(host) {
		if host, err = httpguts.PunycodeHostPort(host); err != nil {
			return false, fmt.Errorf("invalid Host %q: %w", req.Host, err)
		}
	}
	if !httpguts.ValidHostHeader(host) {
		return false, fmt.Errorf("invalid Host %q", host)
	}
	uri := req.URL.RequestURI()
	for i := 0; i < len(uri); i++ {
		if b := uri[i]; b < ' ' || b == 0x7f || b == ' ' {
			return false, fmt.Errorf("invalid request target %q", uri)
		}
	}
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return false, fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false, fmt.Errorf("invalid value of header %s", k)
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	switch n := req.ContentLength; {
	case req.Body != nil && n < 0:
		chunked = true
		w.WriteString("Transfer-Encoding: chunked\r\n")
		first := true
		for k := range req.Trailer {
			switch k = http.CanonicalHeaderKey(k); k {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				return false, fmt.Errorf("invalid trailer %s", k)
			}
			if first {
				w.WriteString("Trailer: ")
				first = false
			} else {
				w.WriteByte(',')
			}
			w.WriteString(k)
		}
		if !first {
			w.WriteString("\r\n")
		}
	case req.Body != nil && n > 0:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), n, 10))
		w.WriteString("\r\n")
	case method != http.MethodGet && method != http.MethodHead:
		// As net/http: many servers want a length on these.
		w.WriteString("Content-Length: 0\r\n")
	}
	_, err = w.WriteString("\r\n")
	return chunked, err
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// writeChunk writes p as one chunk.
func writeChunk(w *bufio.Writer, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(len(p)), 16))
	w.WriteString("\r\n")
	w.Write(p)
	_, err := w.WriteString("\r\n")
	return err
}

// endChunked writes the last chunk and the trailers.
func endChunked(w *bufio.Writer, trailer http.Header) error {
	w.WriteString("0\r\n")
	for k, vs := range trailer {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid trailer name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value of trailer %s", k)
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	_, err := w.WriteString("\r\n")
	return err
}

// writeBody sends a body not in memory after the head in w: the head
// at once (the upstream may answer an "Expect: 100-continue" before the
// client sends more), then each read as it comes.
func writeBody(w *bufio.Writer, body io.Reader, chunked bool, length int64, trailer http.Header, read *atomic.Bool) error {
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write request head: %w", err)
	}
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			if !chunked && n+int64(m) > length {
				return fmt.Errorf("request body longer than its Content-Length %d", length)
			}
			n += int64(m)
			if !chunked && n == length {
				// This write is the last: the read after it only sees
				// the end (a body of a known length ends at once).
				read.Store(true)
			}
			var err error
			if chunked {
				err = writeChunk(w, buf[:m])
			} else {
				_, err = w.Write(buf[:m])
			}
			if err == nil {
				err = w.Flush()
			}
			if err != nil {
				return fmt.Errorf("write request body: %w", err)
			}
		}
		if rerr == io.EOF {
			read.Store(true)
			break
		}
		if rerr != nil {
			return fmt.Errorf("read request body: %w", rerr)
		}
	}
	if !chunked {
		if n != length {
			return fmt.Errorf("request body of %d bytes, its Content-Length %d", n, length)
		}
		return nil
	}
	if err := endChunked(w, trailer); err != nil {
		return err
	}
	return w.Flush()
}
