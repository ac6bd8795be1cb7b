package hbone

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// conn is one HTTP/2 connection carrying CONNECT streams, client or
// server side. It is built for tunnelling, not for HTTP in general:
//
//   - One goroutine reads frames (readLoop) and hands each DATA payload to
//     its stream's buffer; it never writes to the connection, so it keeps
//     reading however slow the peer is to read what this side sends (the
//     peer's windows, not its reads, bound what it sends us).
//   - A stream's writer writes its DATA frame itself, under the write
//     lock, in one TLS write together with any control frames queued
//     (WINDOW_UPDATE, SETTINGS and PING acknowledgements, RST_STREAM):
//     there is no writer goroutine in between. Control frames queued while
//     nobody writes are written by the connection's control goroutine.
//
// A byte of a tunnel thus crosses one goroutine hand-off per direction
// and tunnel end (reading goroutine to the stream's reader), where
// net/http's HTTP/2 crosses two to three.
type conn struct {
	nc     net.Conn
	server bool

	// Writing. wmu orders frames on the connection; enc and wbuf are its.
	wmu  sync.Mutex
	wbuf []byte
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	werr error
	// peerTableSize is the peer's SETTINGS_HEADER_TABLE_SIZE, applied to
	// enc before the next header block (-1: unchanged).
	peerTableSize atomic.Int64

	// Control frames waiting for the next write (cmu).
	cmu      sync.Mutex
	ctrl     []byte
	ctrlWake chan struct{}

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
	// maxControlQueue bounds control frames waiting to be written: a
	// peer that sends PINGs or SETTINGS but does not read the answers is
	// cut off.
	maxControlQueue = 1 << 20
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
	_, err := c.nc.Write(b)
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

// queueControl queues whole control frames for the next write.
func (c *conn) queueControl(b []byte) {
	c.cmu.Lock()
	over := len(c.ctrl)+len(b) > maxControlQueue
	if !over {
		c.ctrl = append(c.ctrl, b...)
	}
	c.cmu.Unlock()
	if over {
		go c.fail(&connError{code: codeEnhanceYourCalm, msg: "peer does not read the control frames it asks for"})
		return
	}
	select {
	case c.ctrlWake <- struct{}{}:
	default:
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
		err := c.writeLocked(nil)
		c.wmu.Unlock()
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// writeLocked writes the queued control frames followed by frames (whole
// frames) in one write. The caller holds wmu.
func (c *conn) writeLocked(frames []byte) error {
	b := append(c.takeControl(c.wbuf[:0]), frames...)
	c.wbuf = b
	return c.writeRaw(b)
}

// takeControl appends the queued control frames to b.
func (c *conn) takeControl(b []byte) []byte {
	c.cmu.Lock()
	b = append(b, c.ctrl...)
	c.ctrl = c.ctrl[:0]
	c.cmu.Unlock()
	return b
}

func (c *conn) writeRaw(b []byte) error {
	if c.werr != nil {
		return c.werr
	}
	if len(b) == 0 {
		return nil
	}
	if _, err := c.nc.Write(b); err != nil {
		c.werr = fmt.Errorf("write frames: %w", err)
		return c.werr
	}
	return nil
}

// writeData writes one DATA frame of p, ending the stream with it if end,
// after the queued control frames, in one write.
func (c *conn) writeData(id uint32, p []byte, end bool) error {
	var flags uint8
	if end {
		flags = flagEndStream
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := appendFrame(c.takeControl(c.wbuf[:0]), frameData, flags, id, p)
	c.wbuf = b
	return c.writeRaw(b)
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
	var b []byte
	typ := frameHeaders
	for first := true; first || len(block) > 0; first = false {
		n := min(len(block), max)
		var flags uint8
		if first && end {
			flags |= flagEndStream
		}
		if n == len(block) {
			flags |= flagEndHeaders
		}
		b = appendFrame(b, typ, flags, id, block[:n])
		block = block[n:]
		typ = frameContinuation
	}
	return c.writeLocked(b)
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
	c.writeLocked(appendGoAway(nil, lastID, code, debug))
	if c.werr == nil {
		c.werr = net.ErrClosed
	}
	c.wmu.Unlock()
	c.nc.Close()
	if hook != nil {
		hook()
	}
}

// Close ends the connection and all its streams.
func (c *conn) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

// goAway stops the peer from opening more streams (server) and closes the
// connection once its streams have ended.
func (c *conn) goAway() {
	c.mu.Lock()
	if c.goAwaySent || c.err != nil {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	lastID := c.lastPeerID
	idle := c.active == 0
	c.mu.Unlock()
	c.queueControl(appendGoAway(nil, lastID, codeNo, "shutting down"))
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

// readLoop reads frames until the connection fails.
func (c *conn) readLoop() {
	var hdr [frameHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.nc, hdr[:]); err != nil {
			c.fail(readError(err))
			return
		}
		h := parseFrameHeader(hdr[:])
		c.frames.Add(1)
		if err := c.readFrame(h); err != nil {
			c.fail(err)
			return
		}
	}
}

func readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read frames: peer closed the connection: %w", io.EOF)
	}
	return fmt.Errorf("read frames: %w", err)
}

// payload reads a non-DATA frame's payload into the reading buffer.
func (c *conn) payload(h frameHeader) ([]byte, error) {
	if cap(c.rbuf) < int(h.length) {
		c.rbuf = make([]byte, h.length)
	}
	p := c.rbuf[:h.length]
	if _, err := io.ReadFull(c.nc, p); err != nil {
		return nil, readError(err)
	}
	return p, nil
}

func (c *conn) readFrame(h frameHeader) error {
	if h.length > maxFrameSize {
		return &connError{code: codeFrameSize, msg: fmt.Sprintf("%s frame of %d bytes, the limit is %d", h.typ, h.length, maxFrameSize)}
	}
	if c.block != nil && h.typ != frameContinuation {
		return protocolError("%s frame inside the header block of stream %d", h.typ, c.blockHdr.streamID)
	}
	if !c.gotSettings && (h.typ != frameSettings || h.has(flagAck)) {
		return protocolError("first frame is %s, want SETTINGS", h.typ)
	}
	if h.typ == frameData {
		return c.readData(h)
	}
	p, err := c.payload(h)
	if err != nil {
		return err
	}
	switch h.typ {
	case frameHeaders:
		return c.readHeaders(h, p)
	case frameContinuation:
		return c.readContinuation(h, p)
	case frameSettings:
		return c.readSettings(h, p)
	case frameWindowUpdate:
		return c.readWindowUpdate(h, p)
	case framePing:
		if h.streamID != 0 || len(p) != 8 {
			return protocolError("PING on stream %d with %d bytes", h.streamID, len(p))
		}
		if !h.has(flagAck) {
			c.queueControl(appendFrame(nil, framePing, flagAck, 0, p))
		} else {
			select {
			case c.pingAck <- struct{}{}:
			default:
			}
		}
		return nil
	case frameRSTStream:
		if h.streamID == 0 || len(p) != 4 {
			return protocolError("RST_STREAM on stream %d with %d bytes", h.streamID, len(p))
		}
		code := errCode(binary.BigEndian.Uint32(p))
		if st := c.stream(h.streamID); st != nil {
			err := error(&ResetError{Code: uint32(code), Remote: true})
			if code == codeRefusedStream {
				err = fmt.Errorf("%w: %w", ErrRefusedStream, err)
			}
			st.abort(err)
			return st.countReset()
		} else if c.idleStream(h.streamID) {
			return protocolError("RST_STREAM on idle stream %d", h.streamID)
		}
		return nil
	case frameGoAway:
		if h.streamID != 0 || len(p) < 8 {
			return protocolError("GOAWAY on stream %d with %d bytes", h.streamID, len(p))
		}
		c.readGoAway(binary.BigEndian.Uint32(p)&(1<<31-1), errCode(binary.BigEndian.Uint32(p[4:])))
		return nil
	case framePriority:
		if h.streamID == 0 || len(p) != 5 {
			return protocolError("PRIORITY on stream %d with %d bytes", h.streamID, len(p))
		}
		return nil
	case framePushPromise:
		return protocolError("PUSH_PROMISE, push is disabled")
	default:
		// Unknown frame types are ignored (RFC 9113 section 4.1).
		return nil
	}
}

// stream returns an open stream, or nil.
func (c *conn) stream(id uint32) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// idleStream says whether id names a stream that was never opened.
func (c *conn) idleStream(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idleStreamLocked(id)
}

func (c *conn) idleStreamLocked(id uint32) bool {
	if c.server == (id%2 == 1) {
		return id > c.lastPeerID
	}
	return id >= c.nextID
}

func (c *conn) readSettings(h frameHeader, p []byte) error {
	if h.streamID != 0 {
		return protocolError("SETTINGS on stream %d", h.streamID)
	}
	if h.has(flagAck) {
		if len(p) != 0 {
			return &connError{code: codeFrameSize, msg: "SETTINGS acknowledgement with a payload"}
		}
		return nil
	}
	if len(p)%6 != 0 {
		return &connError{code: codeFrameSize, msg: fmt.Sprintf("SETTINGS of %d bytes, not a multiple of 6", len(p))}
	}
	c.mu.Lock()
	for ; len(p) > 0; p = p[6:] {
		id, v := binary.BigEndian.Uint16(p), binary.BigEndian.Uint32(p[2:])
		switch id {
		case settingHeaderTableSize:
			c.peerTableSize.Store(int64(v))
		case settingEnablePush:
			if v > 1 {
				c.mu.Unlock()
				return protocolError("SETTINGS_ENABLE_PUSH %d", v)
			}
		case settingMaxConcurrentStreams:
			c.peer.maxStreams = v
		case settingInitialWindowSize:
			if v > maxWindow {
				c.mu.Unlock()
				return &connError{code: codeFlowControl, msg: fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d", v)}
			}
			delta := int64(v) - c.peer.initWindow
			c.peer.initWindow = int64(v)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					c.mu.Unlock()
					return &connError{code: codeFlowControl, msg: fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d takes stream %d's window above 2^31-1", v, st.id)}
				}
			}
		case settingMaxFrameSize:
			if v < defaultFrameSize || v > maxAllowedFrame {
				c.mu.Unlock()
				return protocolError("SETTINGS_MAX_FRAME_SIZE %d", v)
			}
			c.peer.maxFrame = v
		}
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	c.queueControl(appendFrame(nil, frameSettings, flagAck, 0))
	if !c.gotSettings {
		c.gotSettings = true
		close(c.settings)
	}
	return nil
}

func (c *conn) readWindowUpdate(h frameHeader, p []byte) error {
	if len(p) != 4 {
		return &connError{code: codeFrameSize, msg: fmt.Sprintf("WINDOW_UPDATE of %d bytes", len(p))}
	}
	incr := int64(binary.BigEndian.Uint32(p) & (1<<31 - 1))
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.streamID == 0 {
		if incr == 0 {
			return protocolError("WINDOW_UPDATE of 0 on the connection")
		}
		c.sendWindow += incr
		if c.sendWindow > maxWindow {
			return &connError{code: codeFlowControl, msg: "connection send window above 2^31-1"}
		}
		c.cond.Broadcast()
		return nil
	}
	st := c.streams[h.streamID]
	if st == nil {
		if c.idleStreamLocked(h.streamID) {
			return protocolError("WINDOW_UPDATE on idle stream %d", h.streamID)
		}
		return nil // a stream that has ended
	}
	if incr == 0 {
		go st.reset(codeProtocol, fmt.Errorf("window update of 0 on stream %d", h.streamID))
		return nil
	}
	if st.sendWindow+incr > maxWindow {
		go st.reset(codeFlowControl, fmt.Errorf("window update of %d on stream %d", incr, h.streamID))
		return nil
	}
	st.sendWindow += incr
	c.cond.Broadcast()
	return nil
}

func (c *conn) readGoAway(lastID uint32, code errCode) {
	c.mu.Lock()
	c.goAwayRecv = true
	var refused []*stream
	for id, st := range c.streams {
		if id > lastID && c.server == (id%2 == 0) {
			refused = append(refused, st)
		}
	}
	idle := c.active == 0
	c.cond.Broadcast()
	c.mu.Unlock()
	for _, st := range refused {
		st.abort(fmt.Errorf("%w: GOAWAY %s after stream %d", ErrRefusedStream, code, lastID))
	}
	if idle {
		c.Close()
	}
}

// readData hands a DATA frame's payload to its stream.
func (c *conn) readData(h frameHeader) error {
	if h.streamID == 0 {
		return protocolError("DATA on stream 0")
	}
	if c.recvWindow.Add(-int64(h.length)) < 0 {
		return &connError{code: codeFlowControl, msg: "peer sent more DATA than the connection window"}
	}
	buf := getChunk(int(h.length))
	p := (*buf)[:h.length]
	if _, err := io.ReadFull(c.nc, p); err != nil {
		putChunk(buf)
		return readError(err)
	}
	data, err := unpad(h, p)
	if err != nil {
		putChunk(buf)
		return err
	}
	st := c.stream(h.streamID)
	if st == nil {
		putChunk(buf)
		c.credit(int64(h.length))
		if c.idleStream(h.streamID) {
			return protocolError("DATA on idle stream %d", h.streamID)
		}
		c.queueControl(appendRSTStream(nil, h.streamID, codeStreamClosed))
		return nil
	}
	return st.receive(buf, data, int64(h.length), h.has(flagEndStream))
}

// credit returns n consumed bytes to the peer's connection window,
// batching them into WINDOW_UPDATEs of at least half the window.
func (c *conn) credit(n int64) {
	if v := c.recvUnacked.Add(n); v >= connWindow/2 {
		if v = c.recvUnacked.Swap(0); v > 0 {
			c.recvWindow.Add(v)
			c.queueControl(appendWindowUpdate(nil, 0, uint32(v)))
		}
	}
}

func (c *conn) readHeaders(h frameHeader, p []byte) error {
	if h.streamID == 0 {
		return protocolError("HEADERS on stream 0")
	}
	p, err := unpad(h, p)
	if err != nil {
		return err
	}
	if h.has(flagPriority) {
		if len(p) < 5 {
			return protocolError("HEADERS with priority but %d bytes", len(p))
		}
		p = p[5:]
	}
	c.block = append(make([]byte, 0, len(p)), p...)
	c.blockHdr = h
	c.blockN = 1
	if h.has(flagEndHeaders) {
		return c.endBlock()
	}
	return nil
}

func (c *conn) readContinuation(h frameHeader, p []byte) error {
	if c.block == nil || h.streamID != c.blockHdr.streamID {
		return protocolError("CONTINUATION on stream %d outside a header block", h.streamID)
	}
	c.blockN++
	if len(c.block)+len(p) > maxHeaderBlock || c.blockN > maxBlockFrames {
		return &connError{code: codeEnhanceYourCalm, msg: fmt.Sprintf("header block over %d bytes or %d frames", maxHeaderBlock, maxBlockFrames)}
	}
	c.block = append(c.block, p...)
	if h.has(flagEndHeaders) {
		return c.endBlock()
	}
	return nil
}

// endBlock decodes a whole header block (every block is decoded, also of
// streams that are gone, to keep the HPACK state in step) and acts on it.
func (c *conn) endBlock() error {
	h, block := c.blockHdr, c.block
	c.block = nil
	if len(block) > maxHeaderBlock {
		return &connError{code: codeEnhanceYourCalm, msg: fmt.Sprintf("header block over %d bytes", maxHeaderBlock)}
	}
	fields, err := c.dec.DecodeFull(block)
	if err != nil {
		return &connError{code: codeCompression, msg: err.Error()}
	}
	// A small block can decode to a huge list (one byte per reference
	// to a large table entry): hold the peer to the
	// SETTINGS_MAX_HEADER_LIST_SIZE this side advertised.
	size := 0
	for _, f := range fields {
		size += int(f.Size())
	}
	if size > maxHeaderBlock {
		return &connError{code: codeEnhanceYourCalm, msg: fmt.Sprintf("header list of %d bytes, the limit is %d", size, maxHeaderBlock)}
	}
	end := h.has(flagEndStream)
	if st := c.stream(h.streamID); st != nil {
		return st.receiveHeaders(fields, end)
	}
	if c.server && h.streamID%2 == 1 {
		return c.openPeerStream(h.streamID, fields, end)
	}
	if c.idleStream(h.streamID) {
		return protocolError("HEADERS on idle stream %d", h.streamID)
	}
	return nil
}

// openPeerStream starts a request the client opened.
func (c *conn) openPeerStream(id uint32, fields []hpack.HeaderField, end bool) error {
	c.mu.Lock()
	if id <= c.lastPeerID {
		c.mu.Unlock()
		// A stream that was open and is gone (trailers, late frames).
		return nil
	}
	c.lastPeerID = id
	if c.goAwaySent {
		c.mu.Unlock()
		c.queueControl(appendRSTStream(nil, id, codeRefusedStream))
		return nil
	}
	c.peerStreams++
	if c.active >= maxConcurrentStreams {
		// The client ignored the stream limit it was told.
		err := c.prematureLocked()
		c.mu.Unlock()
		c.queueControl(appendRSTStream(nil, id, codeRefusedStream))
		return err
	}
	st := c.newStreamLocked(id)
	c.mu.Unlock()
	if end {
		st.receive(nil, nil, 0, true)
	}
	c.onRequest(st, fields)
	return nil
}

// newStreamLocked registers a stream and takes a slot for it. The caller
// holds mu.
func (c *conn) newStreamLocked(id uint32) *stream {
	st := &stream{c: c, id: id, sendWindow: c.peer.initWindow, recvWindow: streamWindow}
	if c.server {
		st.opened = time.Now()
	}
	st.cond.L = &st.mu
	if c.server {
		// The request's hooks stop when the stream ends.
		st.ctx, st.cancel = context.WithCancel(context.Background())
	} else {
		st.resp = make(chan response, 1)
	}
	c.streams[id] = st
	c.active++
	if c.idle != nil {
		c.idle.Stop()
	}
	return st
}

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
		case st.recvErr != nil:
			return st.recvErr
		case st.recvEnd:
			return io.EOF
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

// Pools of DATA payload buffers by size class.
var chunkPools = [...]struct {
	size int
	pool sync.Pool
}{{size: 1 << 10}, {size: 16 << 10}, {size: maxFrameSize}}

func getChunk(n int) *[]byte {
	for i := range chunkPools {
		p := &chunkPools[i]
		if n <= p.size {
			if b, ok := p.pool.Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, p.size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

func putChunk(b *[]byte) {
	if b == nil {
		return
	}
	for i := range chunkPools {
		if p := &chunkPools[i]; cap(*b) == p.size {
			*b = (*b)[:p.size]
			p.pool.Put(b)
			return
		}
	}
}

// validField says whether a header field may be sent or accepted.
func validField(f hpack.HeaderField) bool {
	name := f.Name
	if f.IsPseudo() {
		name = name[1:]
	}
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return false
		}
	}
	return httpguts.ValidHeaderFieldName(name) && httpguts.ValidHeaderFieldValue(f.Value)
}
