package hbone

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// The reading side of a connection: the goroutine that reads frames
// (readLoop), checks them against RFC 9113 and this side's limits, and
// hands their payloads to streams; and the opening of streams the peer
// starts.

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
			switch {
			case code == codeRefusedStream:
				err = fmt.Errorf("%w: %w", ErrRefusedStream, err)
			case code == codeNo && st.ended():
				// The peer answered in full and wants no more of this
				// side's data (RFC 9113 section 8.1): an orderly end of
				// the sending side, as a closed connection is.
				err = fmt.Errorf("%w: %w", net.ErrClosed, err)
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
		// The handler's context ends when the stream does.
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
