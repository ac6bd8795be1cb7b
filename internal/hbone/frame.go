package hbone

import (
	"encoding/binary"
	"fmt"
)

// HTTP/2 framing (RFC 9113 section 4 and 6), only as much of it as a
// tunnel of CONNECT streams needs. Frames are encoded into and decoded
// from byte slices here; the connection in conn.go moves them.

// preface is what an HTTP/2 client sends first (RFC 9113 section 3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// frameType is an HTTP/2 frame type.
type frameType uint8

const (
	frameData         frameType = 0x0
	frameHeaders      frameType = 0x1
	framePriority     frameType = 0x2
	frameRSTStream    frameType = 0x3
	frameSettings     frameType = 0x4
	framePushPromise  frameType = 0x5
	framePing         frameType = 0x6
	frameGoAway       frameType = 0x7
	frameWindowUpdate frameType = 0x8
	frameContinuation frameType = 0x9
)

var frameNames = [...]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"}

func (t frameType) String() string {
	if int(t) < len(frameNames) {
		return frameNames[t]
	}
	return fmt.Sprintf("frame type 0x%x", uint8(t))
}

// Frame flags.
const (
	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// errCode is an HTTP/2 error code (RFC 9113 section 7).
type errCode uint32

const (
	codeNo                 errCode = 0x0
	codeProtocol           errCode = 0x1
	codeInternal           errCode = 0x2
	codeFlowControl        errCode = 0x3
	codeSettingsTimeout    errCode = 0x4
	codeStreamClosed       errCode = 0x5
	codeFrameSize          errCode = 0x6
	codeRefusedStream      errCode = 0x7
	codeCancel             errCode = 0x8
	codeCompression        errCode = 0x9
	codeConnect            errCode = 0xa
	codeEnhanceYourCalm    errCode = 0xb
	codeInadequateSecurity errCode = 0xc
	codeHTTP11Required     errCode = 0xd
)

var codeNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
	"FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

func (c errCode) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("error code 0x%x", uint32(c))
}

// Settings identifiers (RFC 9113 section 6.5.2).
const (
	settingHeaderTableSize      = 0x1
	settingEnablePush           = 0x2
	settingMaxConcurrentStreams = 0x3
	settingInitialWindowSize    = 0x4
	settingMaxFrameSize         = 0x5
	settingMaxHeaderListSize    = 0x6
)

// Protocol limits and defaults.
const (
	defaultWindow    = 65535
	defaultFrameSize = 16384
	maxAllowedFrame  = 1<<24 - 1
	maxWindow        = 1<<31 - 1
)

// frameHeader is the 9 bytes in front of every frame.
type frameHeader struct {
	length   uint32
	typ      frameType
	flags    uint8
	streamID uint32
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		length:   uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:      frameType(b[3]),
		flags:    b[4],
		streamID: binary.BigEndian.Uint32(b[5:9]) & (1<<31 - 1),
	}
}

func (h frameHeader) has(f uint8) bool { return h.flags&f != 0 }

// putFrameHeader writes a frame header into b[:9].
func putFrameHeader(b []byte, length int, typ frameType, flags uint8, streamID uint32) {
	b[0], b[1], b[2] = byte(length>>16), byte(length>>8), byte(length)
	b[3] = byte(typ)
	b[4] = flags
	binary.BigEndian.PutUint32(b[5:9], streamID)
}

// appendFrame appends a whole frame with payload p to b.
func appendFrame(b []byte, typ frameType, flags uint8, streamID uint32, p ...[]byte) []byte {
	n := 0
	for _, q := range p {
		n += len(q)
	}
	var h [frameHeaderLen]byte
	putFrameHeader(h[:], n, typ, flags, streamID)
	b = append(b, h[:]...)
	for _, q := range p {
		b = append(b, q...)
	}
	return b
}

// setting is one SETTINGS parameter.
type setting struct {
	id  uint16
	val uint32
}

func appendSettings(b []byte, s ...setting) []byte {
	p := make([]byte, 0, 6*len(s))
	for _, x := range s {
		p = binary.BigEndian.AppendUint16(p, x.id)
		p = binary.BigEndian.AppendUint32(p, x.val)
	}
	return appendFrame(b, frameSettings, 0, 0, p)
}

func appendWindowUpdate(b []byte, streamID uint32, incr uint32) []byte {
	return appendFrame(b, frameWindowUpdate, 0, streamID, binary.BigEndian.AppendUint32(nil, incr))
}

func appendRSTStream(b []byte, streamID uint32, code errCode) []byte {
	return appendFrame(b, frameRSTStream, 0, streamID, binary.BigEndian.AppendUint32(nil, uint32(code)))
}

func appendGoAway(b []byte, lastID uint32, code errCode, debug string) []byte {
	p := binary.BigEndian.AppendUint32(nil, lastID)
	p = binary.BigEndian.AppendUint32(p, uint32(code))
	return appendFrame(b, frameGoAway, 0, 0, p, []byte(debug))
}

// connError is a connection error (RFC 9113 section 5.4.1): the
// connection ends with GOAWAY carrying code.
type connError struct {
	code errCode
	msg  string
}

func (e *connError) Error() string {
	return fmt.Sprintf("http2 connection error %s: %s", e.code, e.msg)
}

func protocolError(format string, a ...any) error {
	return &connError{code: codeProtocol, msg: fmt.Sprintf(format, a...)}
}

// ResetError is a stream the peer reset with RST_STREAM, or that ended
// because its connection did.
type ResetError struct {
	Code   uint32 // the HTTP/2 error code
	Remote bool   // the peer sent it
}

func (e *ResetError) Error() string {
	who := "local"
	if e.Remote {
		who = "peer"
	}
	return fmt.Sprintf("stream reset by %s: %s", who, errCode(e.Code))
}

// unpad strips the padding of a PADDED frame's payload.
func unpad(h frameHeader, p []byte) ([]byte, error) {
	if !h.has(flagPadded) {
		return p, nil
	}
	if len(p) == 0 {
		return nil, protocolError("%s frame padded without a pad length", h.typ)
	}
	pad := int(p[0])
	if pad >= len(p) {
		return nil, protocolError("%s frame padding %d exceeds its payload %d", h.typ, pad, len(p)-1)
	}
	return p[1 : len(p)-pad], nil
}
