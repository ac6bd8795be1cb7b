package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// Streams: one CONNECT tunnel each, a net.Conn with half-close; the
// receive buffer the reading goroutine fills, flow control, and the
// writes that seal DATA frames themselves.

// response is the answer to a client's CONNECT.
type response struct {
	status int
	header []hpack.HeaderField
	err    error
}

// stream is one CONNECT stream, either side, seen as a connection.
type stream struct {
	c  *conn
	id uint32
	// opened is when the peer opened it (server only).
	opened time.Time

	// Send side, under c.mu.
	sendWindow int64
	sentEnd    bool
	sendErr    error
	// done says the stream left c.streams (both sides ended or reset).
	done bool

	// Receive side, under mu.
	mu         sync.Mutex
	cond       sync.Cond
	chunks     []chunk // received, not yet read: chunks[head:]
	head       int
	recvEnd    bool  // END_STREAM received
	recvErr    error // reset, or the connection ended
	closed     bool  // Close was called
	recvWindow int64
	unacked    int64
	gotHeaders bool
	// sink is WriteTo's TCP destination while it runs; draining says
	// WriteTo is writing to it, direct counts bytes the reading goroutine
	// wrote to it.
	sink     syscall.RawConn
	draining bool
	direct   int64

	resp chan response // client: the peer's response
	// ctx of a server's stream ends with the stream.
	ctx    context.Context
	cancel context.CancelFunc
	// local and remote are the addresses the stream shows as a net.Conn.
	local, remote net.Addr
	// release, set by the side that opened the slot, frees it once.
	release sync.Once
}

type chunk struct {
	buf  *[]byte
	data []byte
}

// receive appends a DATA payload (n bytes of window, padding included).
func (st *stream) receive(buf *[]byte, data []byte, n int64, end bool) error {
	c := st.c
	st.mu.Lock()
	var why error
	code := codeStreamClosed
	switch {
	case st.recvEnd:
		why = errors.New("DATA after END_STREAM")
	case !c.server && !st.gotHeaders && (n > 0 || end):
		code, why = codeProtocol, errors.New("DATA before the response headers")
	case st.recvWindow < n:
		code, why = codeFlowControl, errors.New("peer sent more DATA than the stream window")
	}
	if why != nil {
		st.mu.Unlock()
		putChunk(buf)
		c.credit(n)
		st.reset(code, why)
		return nil
	}
	st.recvWindow -= n
	// Padding is nothing to read: it counts as consumed at once.
	pad := n - int64(len(data))
	st.unacked += pad
	if st.closed || st.recvErr != nil {
		// Nobody reads any more: the bytes go back to the connection.
		st.recvEnd = end
		st.mu.Unlock()
		putChunk(buf)
		c.credit(n)
	} else {
		var upd, direct int64
		if st.sink != nil && !st.draining && st.head == len(st.chunks) && len(data) > 0 && len(data) <= maxDirect {
			k := st.writeDirect(data)
			data = data[k:]
			direct = int64(k)
			st.direct += direct
			upd = st.consumedLocked(direct)
		}
		if len(data) > 0 {
			st.chunks = append(st.chunks, chunk{buf: buf, data: data})
		} else {
			putChunk(buf)
		}
		st.recvEnd = end
		if len(data) > 0 || end {
			st.cond.Signal()
		}
		st.mu.Unlock()
		if pad+direct > 0 || upd > 0 {
			st.credit(upd, pad+direct)
		}
	}
	if end {
		c.endRecv(st)
	}
	return nil
}

// receiveHeaders handles a header block on an open stream: a client's
// response, or trailers.
func (st *stream) receiveHeaders(fields []hpack.HeaderField, end bool) error {
	st.mu.Lock()
	first := !st.gotHeaders && !st.c.server
	st.mu.Unlock()
	if !first {
		if !end {
			st.reset(codeProtocol, errors.New("trailers without END_STREAM"))
			return nil
		}
		return st.receive(nil, nil, 0, true)
	}
	status := -1
	for _, f := range fields {
		if f.Name == ":status" {
			status, _ = strconv.Atoi(f.Value)
		}
	}
	if status < 100 || status > 999 {
		st.reset(codeProtocol, errors.New("response without a valid :status"))
		return nil
	}
	if status < 200 {
		return nil // informational
	}
	st.mu.Lock()
	st.gotHeaders = true
	st.mu.Unlock()
	select {
	case st.resp <- response{status: status, header: fields}:
	default:
		// The stream failed first (its Connect gave up): nobody waits.
	}
	if end {
		return st.receive(nil, nil, 0, true)
	}
	return nil
}

// ended reports whether the peer's END_STREAM was received.
func (st *stream) ended() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.recvEnd
}

// endRecv notes END_STREAM received; the stream ends once both sides did.
func (c *conn) endRecv(st *stream) {
	c.mu.Lock()
	both := st.sentEnd
	c.mu.Unlock()
	if both {
		st.finish()
	}
}

// finish removes an ended stream from its connection.
func (st *stream) finish() {
	c := st.c
	c.mu.Lock()
	if st.done {
		c.mu.Unlock()
		return
	}
	st.done = true
	delete(c.streams, st.id)
	c.cond.Broadcast()
	c.mu.Unlock()
	if !c.server {
		st.releaseSlot()
	}
}

func (st *stream) releaseSlot() {
	st.release.Do(st.c.releaseSlot)
}

// abort fails both sides of the stream with err and removes it.
func (st *stream) abort(err error) {
	// The send side first: whoever wakes up on either side must find
	// the stream no longer able to send, or its Close would send a
	// second RST_STREAM (or one answering the peer's).
	st.c.mu.Lock()
	if st.sendErr == nil {
		st.sendErr = err
	}
	st.c.cond.Broadcast()
	st.c.mu.Unlock()
	st.mu.Lock()
	if st.recvErr == nil {
		st.recvErr = err
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	select {
	case st.resp <- response{err: err}:
	default:
	}
	if st.cancel != nil {
		st.cancel()
	}
	st.finish()
}

// reset ends the stream with RST_STREAM code.
// A stream that already failed (reset by either side, or its connection
// ended) sends no RST_STREAM: at most one per stream, none in answer to
// the peer's (RFC 9113 section 5.4.2).
// sendEnded returns why nothing more may be sent on the stream (it was
// reset, or left the connection), or nil.
func (st *stream) sendEnded() error {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	if st.sendErr != nil {
		return st.sendErr
	}
	if st.done {
		return errStreamDone
	}
	return nil
}

// errStreamDone: the stream has left its connection.
var errStreamDone = errors.New("hbone stream ended")

func (st *stream) reset(code errCode, why error) {
	err := fmt.Errorf("%w: %w", &ResetError{Code: uint32(code)}, why)
	st.c.mu.Lock()
	send := !st.done && st.sendErr == nil
	if st.sendErr == nil {
		st.sendErr = err
	}
	st.c.mu.Unlock()
	if send {
		st.c.queueControl(appendRSTStream(nil, st.id, code))
	}
	st.abort(err)
	if code != codeNo && code != codeCancel {
		// A reset the peer provoked by an error on the stream counts as
		// one it sent.
		if cerr := st.countReset(); cerr != nil {
			go st.c.fail(cerr)
		}
	}
}

// countReset counts a reset of a stream the peer opened, if it came
// within prematureLifetime of the stream's opening, and returns the
// connection error that ends an abusive connection.
func (st *stream) countReset() error {
	if !st.c.server || st.opened.IsZero() || time.Since(st.opened) >= prematureLifetime {
		return nil
	}
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	return st.c.prematureLocked()
}

// prematureLocked counts a premature reset and returns the connection
// error once the connection has too many (see prematureLifetime). The
// caller holds mu.
func (c *conn) prematureLocked() error {
	c.premature++
	if c.peerStreams >= prematureMinStreams && 2*c.premature >= c.peerStreams {
		return &connError{code: codeEnhanceYourCalm, msg: fmt.Sprintf("%d of %d streams reset or refused within %s of opening", c.premature, c.peerStreams, prematureLifetime)}
	}
	return nil
}

// Read reads the stream's data; io.EOF once the peer ended it.
func (st *stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	if err := st.waitLocked(); err != nil {
		st.mu.Unlock()
		return 0, err
	}
	n := 0
	for n < len(p) && st.head < len(st.chunks) {
		ch := &st.chunks[st.head]
		k := copy(p[n:], ch.data)
		n += k
		ch.data = ch.data[k:]
		if len(ch.data) == 0 {
			putChunk(ch.buf)
			*ch = chunk{}
			st.head++
		}
	}
	st.compactLocked()
	upd := st.consumedLocked(int64(n))
	st.mu.Unlock()
	st.credit(upd, int64(n))
	return n, nil
}

// waitLocked waits until data is buffered, or says why none will come
// (io.EOF once the peer ended the stream). The caller holds mu.
func (st *stream) waitLocked() error {
	for st.head == len(st.chunks) {
		switch {
		case st.closed:
			return net.ErrClosed
		case st.recvEnd:
			// Everything the peer sent was read: a reset after its
			// END_STREAM ends only the sending side.
			return io.EOF
		case st.recvErr != nil:
			return st.recvErr
		}
		st.cond.Wait()
	}
	return nil
}

// compactLocked empties the chunk queue once everything in it was read,
// keeping its array.
func (st *stream) compactLocked() {
	if st.head == len(st.chunks) {
		st.chunks = st.chunks[:0]
		st.head = 0
	}
}

// consumedLocked counts n bytes read and returns the stream window to
// give back now, if any. The caller holds mu and then calls credit.
func (st *stream) consumedLocked(n int64) int64 {
	st.unacked += n
	if st.recvEnd || st.unacked < streamWindow/2 {
		return 0
	}
	upd := st.unacked
	st.unacked = 0
	st.recvWindow += upd
	return upd
}

// credit sends the stream's window update upd, and counts n bytes read
// for the connection window.
func (st *stream) credit(upd, n int64) {
	if upd > 0 {
		st.c.queueControl(appendWindowUpdate(nil, st.id, uint32(upd)))
	}
	st.c.credit(n)
}

// WriteTo writes the stream's data to w until the peer ends the stream.
// When w is a TCP connection, the connection's reading goroutine writes
// small DATA payloads to it itself, without blocking, whenever nothing is
// queued and WriteTo is not writing: a request or response of a few
// kilobytes then reaches the socket without waking another goroutine.
// Large payloads and whatever the socket does not take at once are
// queued for WriteTo, so that decrypting the next frame and writing this
// one overlap.
func (st *stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	st.mu.Lock()
	if tc, ok := w.(*net.TCPConn); ok {
		st.sink, _ = tc.SyscallConn()
	}
	defer func() {
		st.sink = nil
		st.mu.Unlock()
	}()
	var bufs net.Buffers
	var held []*[]byte
	for {
		err := st.waitLocked()
		total += st.direct
		st.direct = 0
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		bufs, held = bufs[:0], held[:0]
		var n int64
		for _, ch := range st.chunks[st.head:] {
			bufs = append(bufs, ch.data)
			held = append(held, ch.buf)
			n += int64(len(ch.data))
		}
		clear(st.chunks)
		st.chunks, st.head = st.chunks[:0], 0
		st.draining = true
		st.mu.Unlock()

		k, werr := bufs.WriteTo(w)
		for i, b := range held {
			putChunk(b)
			held[i] = nil
		}
		total += k

		st.mu.Lock()
		st.draining = false
		upd := st.consumedLocked(n)
		st.mu.Unlock()
		st.credit(upd, n)
		st.mu.Lock()
		if werr != nil {
			return total, werr
		}
	}
}

// maxDirect is the largest DATA payload the reading goroutine writes to a
// stream's TCP destination itself.
const maxDirect = 16 << 10

// writeDirect writes data to the stream's TCP destination without
// blocking and returns how much the socket took. The caller holds mu and
// has checked that WriteTo is waiting with nothing queued.
func (st *stream) writeDirect(data []byte) int {
	n := 0
	st.sink.Write(func(fd uintptr) bool {
		for n < len(data) {
			k, err := unix.Write(int(fd), data[n:])
			if err == unix.EINTR {
				continue
			}
			if err != nil || k <= 0 {
				break // the socket is full or failed: WriteTo takes the rest
			}
			n += k
		}
		return true
	})
	return n
}

// Write sends p as DATA frames as the windows allow.
func (st *stream) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k, err := st.reserve(len(p))
		if err != nil {
			return n, err
		}
		if err := st.c.writeData(st.id, p[:k], false); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// reserve waits until the windows allow sending and takes up to n bytes
// of them (at most one frame).
func (st *stream) reserve(n int) (int, error) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case st.sendErr != nil:
			return 0, st.sendErr
		case st.sentEnd:
			return 0, net.ErrClosed
		case c.err != nil:
			return 0, fmt.Errorf("%w: %w", ErrConnClosed, c.err)
		}
		if w := min(st.sendWindow, c.sendWindow); w > 0 {
			k := int(min(int64(n), w, int64(c.peer.maxFrame)))
			st.sendWindow -= int64(k)
			c.sendWindow -= int64(k)
			return k, nil
		}
		c.cond.Wait()
	}
}

// CloseWrite ends the sending side (END_STREAM); reading goes on.
func (st *stream) CloseWrite() error {
	c := st.c
	c.mu.Lock()
	switch {
	case st.sendErr != nil:
		err := st.sendErr
		c.mu.Unlock()
		return err
	case st.sentEnd:
		c.mu.Unlock()
		return nil
	}
	st.sentEnd = true
	c.mu.Unlock()
	if err := c.writeData(st.id, nil, true); err != nil {
		return err
	}
	st.mu.Lock()
	both := st.recvEnd
	st.mu.Unlock()
	if both {
		st.finish()
	}
	return nil
}

// Close ends the stream both ways: with END_STREAM if the peer has
// already ended its side and data may still go, with RST_STREAM CANCEL
// otherwise. Unread data is dropped.
func (st *stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	var dropped int64
	for _, ch := range st.chunks[st.head:] {
		dropped += int64(len(ch.data))
		putChunk(ch.buf)
	}
	st.chunks, st.head = nil, 0
	recvEnd, recvErr := st.recvEnd, st.recvErr
	st.cond.Broadcast()
	st.mu.Unlock()
	st.c.credit(dropped)

	c := st.c
	c.mu.Lock()
	done, sentEnd, sendErr := st.done, st.sentEnd, st.sendErr
	c.mu.Unlock()
	switch {
	case done:
	case recvEnd && recvErr == nil && !sentEnd && sendErr == nil:
		st.CloseWrite()
	case c.server && sentEnd && sendErr == nil && recvErr == nil:
		// The response is complete and the rest of the request is not
		// wanted (the handler ended after an HTTP "Connection: close",
		// say): RST_STREAM NO_ERROR, as RFC 9113 section 8.1 has a
		// server end a stream it answered in full. The client reads its
		// whole response and an orderly end, not a cancellation.
		st.reset(codeNo, net.ErrClosed)
	default:
		st.reset(codeCancel, net.ErrClosed)
	}
	st.finish()
	return nil
}

func (st *stream) LocalAddr() net.Addr  { return st.local }
func (st *stream) RemoteAddr() net.Addr { return st.remote }

// Deadlines are not supported on streams: close the stream instead.
func (st *stream) SetDeadline(time.Time) error      { return errNoDeadline }
func (st *stream) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (st *stream) SetWriteDeadline(time.Time) error { return errNoDeadline }

var (
	_ net.Conn    = (*stream)(nil)
	_ closeWriter = (*stream)(nil)
)

var errNoDeadline = os.ErrNoDeadline
