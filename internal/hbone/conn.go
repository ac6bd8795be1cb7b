package hbone

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
)

// conn is one HTTP/2 connection carrying CONNECT streams, client or
// server side. It is built for tunnelling, not for HTTP in general:
//
//   - One goroutine reads frames (readLoop) and hands each DATA payload to
//     its stream's buffer; it never writes to the connection, so it keeps
//     reading however slow the peer is to read what this side sends (the
//     peer's windows, not its reads, bound what it sends us).
//   - Frames wait in one queue (out), in the order they were made:
//     whoever has a frame to send appends it under the write lock, which
//     is never held across a system call. A stream's writer then writes
//     the queue itself, in one TLS write, unless another goroutine is
//     writing already: that one takes the frames queued meanwhile in its
//     next write (write combining). There is no writer goroutine in
//     between, and under load the frames of many streams share a TLS
//     record and a system call, as h2's and x/net's write loops batch
//     theirs. Control frames (WINDOW_UPDATE, SETTINGS and PING
//     acknowledgements, RST_STREAM) that the reading goroutine queues
//     while nobody writes are written by the connection's control
//     goroutine.
//
// A byte of a tunnel thus crosses one goroutine hand-off per direction
// and tunnel end (reading goroutine to the stream's reader), where
// net/http's HTTP/2 crosses two to three.
type conn struct {
	nc     net.Conn
	server bool

	// Writing (wmu): out holds whole frames waiting to be written, in
	// order; flushing says a goroutine is writing (flush), spare is the
	// buffer it gives back; queued and wrote count the bytes appended to
	// out and written, so that a caller can wait for its own (wdone
	// signals each write). enc and hbuf encode header blocks.
	wmu      sync.Mutex
	wdone    sync.Cond
	out      []byte
	spare    []byte
	flushing bool
	queued   uint64
	wrote    uint64
	enc      *hpack.Encoder
	hbuf     bytes.Buffer
	werr     error
	ctrlWake chan struct{}
	// peerTableSize is the peer's SETTINGS_HEADER_TABLE_SIZE, applied to
	// enc before the next header block (-1: unchanged).
	peerTableSize atomic.Int64

	// Connection and stream state (mu). cond signals send windows,
	// stream slots and closing.
	mu         sync.Mutex
	cond       sync.Cond
	streams    map[uint32]*stream
	active     int    // streams holding a slot
	nextID     uint32 // client: the next stream id
	lastPeerID uint32 // the highest stream id the peer opened
	sendWindow int64  // connection send window
	peer       peerSettings
	goAwaySent bool
	goAwayRecv bool
	// Server: streams the peer opened, and those that ended prematurely
	// (see prematureLifetime).
	peerStreams uint64
	premature   uint64
	err         error // why the connection ended; nil while it is open
	hook        func()
	idle        *time.Timer

	settings chan struct{} // closed when the peer's first SETTINGS apply
	closed   chan struct{} // closed when the connection ends

	// recvWindow is what the peer may still send on the connection;
	// recvUnacked what streams consumed and no WINDOW_UPDATE returned yet.
	recvWindow  atomic.Int64
	recvUnacked atomic.Int64
	// frames counts the frames read, for keepalive; pingAck has a value
	// when a PING acknowledgement arrived.
	frames  atomic.Uint64
	pingAck chan struct{}

	// Owned by the reading goroutine. gotSettings: the peer's first
	// SETTINGS has been read (settings is closed).
	gotSettings bool
	dec         *hpack.Decoder
	rbuf        []byte
	block       []byte // a header block being assembled
	blockHdr    frameHeader
	blockN      int // frames in the block
	// onRequest starts a request the peer opened (server only).
	onRequest func(st *stream, fields []hpack.HeaderField)
}

type peerSettings struct {
	maxStreams uint32
	initWindow int64
	maxFrame   uint32
}

// Keepalive of client connections: after keepaliveInterval without a
// frame from the peer, a PING; no frame within keepaliveTimeout after it
// ends the connection. A peer that vanished without closing (a node
// that crashed, a path that broke) is found in under half a minute,
// where TCP would retransmit for many minutes under an open stream, and
// the pool stops giving out streams on it. Variables for tests.
var (
	keepaliveInterval = 15 * time.Second
	keepaliveTimeout  = 10 * time.Second
)

// keepalive pings the peer of an idle connection until it ends.
func (c *conn) keepalive(interval, timeout time.Duration) {
	t := time.NewTimer(interval)
	defer t.Stop()
	last := c.frames.Load()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		if n := c.frames.Load(); n != last {
			last = n
			t.Reset(interval)
			continue
		}
		select {
		case <-c.pingAck: // a stale one, from before
		default:
		}
		c.queueControl(appendFrame(nil, framePing, 0, 0, []byte("ambit-ka")))
		t.Reset(timeout)
		select {
		case <-c.closed:
			return
		case <-c.pingAck:
			if !t.Stop() {
				<-t.C
			}
		case <-t.C:
		}
		if c.frames.Load() == last {
			c.fail(fmt.Errorf("%w: no frame from the peer in %v, nor an answer to a PING in %v", ErrPeerUnresponsive, interval, timeout))
			return
		}
		last = c.frames.Load()
		t.Reset(interval)
	}
}

// Limits this side enforces on its peer.
const (
	// maxConcurrentStreams is how many streams a server lets a client
	// open at once on one connection.
	maxConcurrentStreams = 250
	// maxHeaderBlock bounds one header block (all its frames) and
	// maxBlockFrames the frames of one block.
	maxHeaderBlock = 64 << 10
	maxBlockFrames = 64
	// maxControlQueue bounds the frames waiting to be written when a
	// control frame joins them: a peer that sends PINGs or SETTINGS but
	// does not read the answers is cut off.
	maxControlQueue = 1 << 20
	// maxPending is how much a stream's writer leaves queued for another
	// goroutine's write before it waits for that write: it bounds the
	// queue (and its buffers) while one write to a slow peer blocks.
	maxPending = 64 << 10
	// maxKeptBuffer is the largest write buffer a connection keeps
	// between writes.
	maxKeptBuffer = 64 << 10
	// closeTimeout bounds writing a GOAWAY when closing.
	closeTimeout = time.Second
)

// Premature resets (server side): a stream that ends by a reset within
// prematureLifetime of being opened, whether the client reset it or made
// the server reset it by a protocol error on it ("MadeYouReset",
// CVE-2025-8671), or that was refused because the client ignored the
// stream limit. Once a connection has opened prematureMinStreams streams
// and at least half of them ended prematurely, it is ended with GOAWAY
// ENHANCE_YOUR_CALM: a client that opens and cancels streams as fast as
// it can ("rapid reset", CVE-2023-44487) gets a few hundred streams per
// connection and a handshake for every further few hundred. These are
// Envoy's defaults (overload manager, premature_reset_*); a tunnel's
// streams end with END_STREAM in both directions, not with resets, so
// ordinary traffic is far from the ratio. Variables for tests.
var (
	prematureLifetime   = time.Second
	prematureMinStreams = uint64(500)
)

// Errors of connections and streams.
var (
	// ErrConnClosed is a stream ended because its connection did.
	ErrConnClosed = errors.New("hbone connection closed")
	// ErrRefusedStream is a stream the peer did not process (GOAWAY or
	// REFUSED_STREAM): it may be retried on another connection.
	ErrRefusedStream = errors.New("stream refused by peer")
	// ErrPeerUnresponsive ends a client connection whose peer stopped
	// answering (keepalive).
	ErrPeerUnresponsive = errors.New("peer unresponsive")
)

func newConn(nc net.Conn, server bool) *conn {
	c := &conn{
		nc:         nc,
		server:     server,
		ctrlWake:   make(chan struct{}, 1),
		pingAck:    make(chan struct{}, 1),
		streams:    map[uint32]*stream{},
		nextID:     1,
		sendWindow: defaultWindow,
		peer:       peerSettings{maxStreams: maxConcurrentStreams, initWindow: defaultWindow, maxFrame: defaultFrameSize},
		settings:   make(chan struct{}),
		closed:     make(chan struct{}),
	}
	c.cond.L = &c.mu
	c.wdone.L = &c.wmu
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.peerTableSize.Store(-1)
	c.dec = hpack.NewDecoder(4096, nil)
	c.dec.SetMaxStringLength(maxHeaderBlock)
	c.recvWindow.Store(connWindow)
	return c
}

// start writes this side's preface and settings and starts the
// connection's goroutines other than the reading one.
func (c *conn) start() error {
	var b []byte
	s := []setting{
		{settingInitialWindowSize, streamWindow},
		{settingMaxFrameSize, maxFrameSize},
		{settingMaxHeaderListSize, maxHeaderBlock},
	}
	if c.server {
		s = append(s, setting{settingMaxConcurrentStreams, maxConcurrentStreams})
	} else {
		b = append(b, preface...)
		s = append(s, setting{settingEnablePush, 0})
	}
	b = appendSettings(b, s...)
	b = appendWindowUpdate(b, 0, connWindow-defaultWindow)
	c.wmu.Lock()
	c.appendLocked(b)
	err := c.flushLocked(true)
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	go c.controlLoop()
	return nil
}

// Err is why the connection ended, or nil while it is open.
func (c *conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// queueControl queues whole control frames. It never waits on the
// socket (the reading goroutine calls it): the goroutine writing takes
// them, or the control goroutine when nobody writes.
func (c *conn) queueControl(b []byte) {
	c.wmu.Lock()
	over := len(c.out)+len(b) > maxControlQueue
	if !over {
		c.appendLocked(b)
	}
	wake := !c.flushing
	c.wmu.Unlock()
	if over {
		go c.fail(&connError{code: codeEnhanceYourCalm, msg: "peer does not read the control frames it asks for"})
		return
	}
	if wake {
		select {
		case c.ctrlWake <- struct{}{}:
		default:
		}
	}
}

// controlLoop writes control frames queued while no stream writes.
func (c *conn) controlLoop() {
	for {
		select {
		case <-c.ctrlWake:
		case <-c.closed:
			return
		}
		c.wmu.Lock()
		err := c.flushLocked(false)
		c.wmu.Unlock()
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// appendLocked queues whole frames. The caller holds wmu.
func (c *conn) appendLocked(b []byte) {
	c.out = append(c.out, b...)
	c.queued += uint64(len(b))
}

// flushLocked writes the queued frames, unless another goroutine is
// writing: then that one writes them, and flushLocked returns at once
// (wait false, and less than maxPending queued) or once they are
// written. The writing goroutine goes on until the queue is empty, one
// TLS write per round. The caller holds wmu; flushLocked releases it
// while it writes.
func (c *conn) flushLocked(wait bool) error {
	if c.flushing {
		if !wait && len(c.out) < maxPending {
			return c.werr
		}
		mark := c.queued
		for c.flushing && c.wrote < mark && c.werr == nil {
			c.wdone.Wait()
		}
		if c.flushing || c.wrote >= mark || c.werr != nil {
			return c.werr
		}
		// The writer stopped short of these frames (it cannot: it
		// writes until the queue is empty), or a new round is due.
	}
	c.flushing = true
	if !wait {
		// Let goroutines that are ready to run go first: under load they
		// are often other streams' writers, whose frames then join this
		// write instead of making their own (with one P, nothing else
		// runs while this goroutine is in the system call). With nothing
		// else ready this returns at once.
		c.wmu.Unlock()
		runtime.Gosched()
		c.wmu.Lock()
	}
	for c.werr == nil && len(c.out) > 0 {
		b := c.out
		c.out, c.spare = c.spare[:0], nil
		c.wmu.Unlock()
		_, err := c.nc.Write(b)
		c.wmu.Lock()
		if cap(b) <= maxKeptBuffer {
			c.spare = b[:0]
		}
		c.wrote += uint64(len(b))
		if err != nil {
			c.werr = fmt.Errorf("write frames: %w", err)
		}
		c.wdone.Broadcast()
	}
	if c.werr != nil {
		c.out = c.out[:0] // nothing more goes out
	}
	if cap(c.out) > maxKeptBuffer {
		c.out = nil
	}
	c.flushing = false
	c.wdone.Broadcast()
	return c.werr
}

// writeData writes one DATA frame of p, ending the stream with it if end,
// together with whatever else is queued (flushLocked).
func (c *conn) writeData(id uint32, p []byte, end bool) error {
	var flags uint8
	if end {
		flags = flagEndStream
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	n := len(c.out)
	c.out = appendFrame(c.out, frameData, flags, id, p)
	c.queued += uint64(len(c.out) - n)
	return c.flushLocked(false)
}

// writeHeaders encodes fields as one header block on stream id and writes
// it, split into CONTINUATION frames as the peer's frame size needs.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeHeadersLocked(id, fields, end)
}

func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	if v := c.peerTableSize.Swap(-1); v >= 0 {
		c.enc.SetMaxDynamicTableSizeLimit(uint32(min(v, 4096)))
	}
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			return fmt.Errorf("encode headers: %w", err)
		}
	}
	block := c.hbuf.Bytes()
	c.mu.Lock()
	max := int(c.peer.maxFrame)
	c.mu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	b := c.out
	n := len(b)
	typ := frameHeaders
	for first := true; first || len(block) > 0; first = false {
		k := min(len(block), max)
		var flags uint8
		if first && end {
			flags |= flagEndStream
		}
		if k == len(block) {
			flags |= flagEndHeaders
		}
		b = appendFrame(b, typ, flags, id, block[:k])
		block = block[k:]
		typ = frameContinuation
	}
	c.out = b
	c.queued += uint64(len(b) - n)
	return c.flushLocked(false)
}

// fail ends the connection: every stream fails with err, the peer gets a
// GOAWAY saying why (as far as it is still reachable) and the connection
// is closed.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*stream{}
	lastID := c.lastPeerID
	if c.idle != nil {
		c.idle.Stop()
	}
	hook := c.hook
	c.cond.Broadcast()
	c.mu.Unlock()
	close(c.closed)
	serr := fmt.Errorf("%w: %w", ErrConnClosed, err)
	for _, st := range streams {
		st.abort(serr)
	}
	code, debug := codeNo, ""
	var ce *connError
	if errors.As(err, &ce) {
		code, debug = ce.code, ce.msg
	}
	c.nc.SetWriteDeadline(time.Now().Add(closeTimeout))
	c.wmu.Lock()
	if c.werr == nil {
		c.appendLocked(appendGoAway(nil, lastID, code, debug))
		c.flushLocked(true)
	}
	if c.werr == nil {
		c.werr = net.ErrClosed
	}
	c.wmu.Unlock()
	if c.server && code != codeNo {
		// A peer that broke the protocol (or abused it) is likely still
		// writing: closing now, with its bytes unread, makes the kernel
		// answer with a reset that can overtake the GOAWAY. Linger a
		// little so the peer can read why (the reader goes on discarding:
		// every stream has ended).
		time.AfterFunc(abuseLinger, func() { c.nc.Close() })
	} else {
		c.nc.Close()
	}
	if hook != nil {
		hook()
	}
}

// abuseLinger is how long a server keeps a connection it ended for the
// peer's error open after its GOAWAY.
const abuseLinger = 250 * time.Millisecond

// Close ends the connection and all its streams.
func (c *conn) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

// goAway stops the peer from opening more streams (server) and closes the
// connection once its streams have ended.
//
// The GOAWAY is queued in the same critical section that sets
// goAwaySent (the write lock first, as request takes them): a stream the
// reading goroutine refuses because of it (openPeerStream) queues its
// RST_STREAM behind the GOAWAY. Were the GOAWAY queued after, the
// refusal could reach the peer first, and the peer would retry on this
// connection, which it still thinks open, only to be refused again.
func (c *conn) goAway() {
	c.wmu.Lock()
	c.mu.Lock()
	if c.goAwaySent || c.err != nil {
		c.mu.Unlock()
		c.wmu.Unlock()
		return
	}
	c.goAwaySent = true
	lastID := c.lastPeerID
	idle := c.active == 0
	c.mu.Unlock()
	c.appendLocked(appendGoAway(nil, lastID, codeNo, "shutting down"))
	wake := !c.flushing
	c.wmu.Unlock()
	if wake {
		select {
		case c.ctrlWake <- struct{}{}:
		default:
		}
	}
	if idle {
		c.Close()
	}
}

// idleAfter closes the connection after d without streams (0: never).
func (c *conn) idleAfter(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idle = time.AfterFunc(d, c.closeIfIdle)
	if c.active > 0 {
		c.idle.Stop()
	}
}

func (c *conn) closeIfIdle() {
	c.mu.Lock()
	idle := c.active == 0 && c.err == nil
	c.mu.Unlock()
	if idle {
		c.Close()
	}
}

// releaseSlot gives back a stream's slot. The connection closes when the
// last stream of a connection going away ends.
func (c *conn) releaseSlot() {
	c.mu.Lock()
	c.active--
	last := c.active == 0
	closeNow := last && (c.goAwaySent || c.goAwayRecv) && c.err == nil
	if last && c.idle != nil && c.err == nil {
		c.idle.Reset(idleTimeout)
	}
	hook := c.hook
	c.cond.Broadcast()
	c.mu.Unlock()
	if closeNow {
		c.Close()
	}
	if hook != nil {
		hook()
	}
}
