package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambitmesh/ambit/internal/identity"
)

// The tests in this file play a hostile or broken HTTP/2 peer, frame by
// frame with x/net's Framer (and raw bytes where the Framer refuses),
// against our server over real TLS, and a hostile server against our
// client. Each checks the outcome the peer observes (GOAWAY or
// RST_STREAM and their codes, a closed connection, an error from our
// client) and, for the server, that a well-behaved connection still
// tunnels afterwards.

// peerTimeout is a safety net on raw connections: a test whose peer
// stops answering fails instead of hanging. No test waits for it.
const peerTimeout = 20 * time.Second

// h2Peer is a hand-driven HTTP/2 client on a TLS connection to a server.
type h2Peer struct {
	t   testing.TB
	tc  *tls.Conn
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
	// rst counts the RST_STREAMs the server sent, by stream.
	rst map[uint32]int
}

// rawPeer opens a TLS connection to addr as clientID and sends nothing.
func (f *fixture) rawPeer(t testing.TB, addr netip.AddrPort) *h2Peer {
	t.Helper()
	cert := f.issue(t, f.ca, clientID, time.Hour)
	tc, err := tls.Dial("tcp", addr.String(), &tls.Config{
		Certificates:       []tls.Certificate{*cert},
		InsecureSkipVerify: true, // these tests check frames, not the peer
		NextProtos:         []string{ALPN},
		MinVersion:         tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(peerTimeout))
	p := &h2Peer{t: t, tc: tc, fr: http2.NewFramer(tc, tc), rst: map[uint32]int{}}
	p.fr.AllowIllegalWrites = true
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.enc = hpack.NewEncoder(&p.hb)
	return p
}

// newPeer opens a connection to addr and sends the preface and SETTINGS.
func (f *fixture) newPeer(t testing.TB, addr netip.AddrPort) *h2Peer {
	t.Helper()
	p := f.rawPeer(t, addr)
	p.write([]byte(http2.ClientPreface))
	p.check(p.fr.WriteSettings())
	return p
}

func (p *h2Peer) check(err error) {
	p.t.Helper()
	if err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *h2Peer) write(b []byte) {
	p.t.Helper()
	if _, err := p.tc.Write(b); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

// block encodes header fields given as name, value pairs.
func (p *h2Peer) block(kv ...string) []byte {
	p.hb.Reset()
	for i := 0; i < len(kv); i += 2 {
		p.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(p.hb.Bytes())
}

// connect opens stream id with a CONNECT to target and more header
// fields as name, value pairs.
func (p *h2Peer) connect(id uint32, target netip.AddrPort, kv ...string) {
	p.t.Helper()
	fields := append([]string{":method", "CONNECT", ":authority", target.String()}, kv...)
	p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(fields...), EndHeaders: true}))
}

// next reads the next frame other than SETTINGS (which it acknowledges)
// and WINDOW_UPDATE.
func (p *h2Peer) next() (http2.Frame, error) {
	for {
		fm, err := p.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch fm := fm.(type) {
		case *http2.SettingsFrame:
			if !fm.IsAck() {
				// A server that hung up may have reset the connection:
				// what it sent before is still to read.
				p.fr.WriteSettingsAck()
			}
			continue
		case *http2.WindowUpdateFrame:
			continue
		case *http2.RSTStreamFrame:
			p.rst[fm.StreamID]++
		}
		return fm, nil
	}
}

// until reads frames until match says the one it is given is the one
// wanted, and returns it. Frames it skips are listed in the failure.
func (p *h2Peer) until(what string, match func(http2.Frame) bool) http2.Frame {
	p.t.Helper()
	var skipped []string
	for {
		fm, err := p.next()
		if err != nil {
			p.t.Fatalf("read frames: got %v after %v, want %s", err, skipped, what)
		}
		if match(fm) {
			return fm
		}
		skipped = append(skipped, describe(fm))
	}
}

func describe(fm http2.Frame) string {
	switch fm := fm.(type) {
	case *http2.GoAwayFrame:
		return fmt.Sprintf("GOAWAY %v %q", fm.ErrCode, fm.DebugData())
	case *http2.RSTStreamFrame:
		return fmt.Sprintf("RST_STREAM %d %v", fm.StreamID, fm.ErrCode)
	case *http2.MetaHeadersFrame:
		return fmt.Sprintf("HEADERS %d :status %s", fm.StreamID, fm.PseudoValue("status"))
	}
	return fm.Header().String()
}

// wantGoAway reads until a GOAWAY, checks its code, then checks the
// server closes the connection.
func (p *h2Peer) wantGoAway(code http2.ErrCode) *http2.GoAwayFrame {
	p.t.Helper()
	ga := p.until("GOAWAY", func(fm http2.Frame) bool {
		_, ok := fm.(*http2.GoAwayFrame)
		return ok
	}).(*http2.GoAwayFrame)
	if ga.ErrCode != code {
		p.t.Errorf("GOAWAY: got %v %q, want %v", ga.ErrCode, ga.DebugData(), code)
	}
	p.wantClosed()
	return ga
}

// wantClosed reads until the server closes the connection.
func (p *h2Peer) wantClosed() {
	p.t.Helper()
	for {
		_, err := p.next()
		if err == nil {
			continue // frames the server sent before it hung up
		}
		if os.IsTimeout(err) {
			p.t.Fatalf("read after GOAWAY: got %v, want the connection closed", err)
		}
		return
	}
}

// wantRST reads until an RST_STREAM on stream id and checks its code.
func (p *h2Peer) wantRST(id uint32, code http2.ErrCode) {
	p.t.Helper()
	fm := p.until(fmt.Sprintf("RST_STREAM on stream %d", id), func(fm http2.Frame) bool {
		_, ok := fm.(*http2.RSTStreamFrame)
		return ok && fm.Header().StreamID == id
	}).(*http2.RSTStreamFrame)
	if fm.ErrCode != code {
		p.t.Errorf("RST_STREAM on stream %d: got %v, want %v", id, fm.ErrCode, code)
	}
}

// wantStatus reads until the response HEADERS of stream id and returns
// its :status.
func (p *h2Peer) wantStatus(id uint32) string {
	p.t.Helper()
	fm := p.until(fmt.Sprintf("HEADERS on stream %d", id), func(fm http2.Frame) bool {
		_, ok := fm.(*http2.MetaHeadersFrame)
		return ok && fm.Header().StreamID == id
	}).(*http2.MetaHeadersFrame)
	return fm.PseudoValue("status")
}

// readData reads DATA frames until n bytes arrived on stream id,
// skipping DATA of other streams.
func (p *h2Peer) readData(id uint32, n int) []byte {
	p.t.Helper()
	var got []byte
	for len(got) < n {
		fm := p.until(fmt.Sprintf("DATA on stream %d", id), func(fm http2.Frame) bool {
			_, ok := fm.(*http2.DataFrame)
			return ok && fm.Header().StreamID == id
		}).(*http2.DataFrame)
		got = append(got, fm.Data()...)
	}
	return got
}

// echo sends msg on stream id and checks the tunnel sends it back.
func (p *h2Peer) echo(id uint32, msg string) {
	p.t.Helper()
	p.check(p.fr.WriteData(id, false, []byte(msg)))
	if got := p.readData(id, len(msg)); string(got) != msg {
		p.t.Errorf("echo on stream %d: got %q, want %q", id, got, msg)
	}
}

// serve starts s on loopback with the fixture's CA and a server
// certificate and returns its address.
func (f *fixture) serve(t *testing.T, s *Server) netip.AddrPort {
	t.Helper()
	cert := f.issue(t, f.ca, serverID, time.Hour)
	s.Certificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	s.Verifier = f.verifier
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// wantTunnel checks that a well-behaved client still tunnels to target
// through the server at addr.
func (f *fixture) wantTunnel(t *testing.T, addr, target netip.AddrPort) {
	t.Helper()
	cc, err := Dial(t.Context(), addr, ClientConfig{
		Certificate: f.issue(t, f.ca, clientID, time.Hour), Verifier: f.verifier, Expected: serverID,
	})
	if err != nil {
		t.Fatalf("well-behaved client after the hostile one: %v", err)
	}
	defer cc.Close()
	c, err := cc.Connect(t.Context(), target, nil)
	if err != nil {
		t.Fatalf("well-behaved client after the hostile one: %v", err)
	}
	defer c.Close()
	msg := []byte("still tunnelling")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("echo through a well-behaved tunnel: got %q, %v; want %q", got, err, msg)
	}
}

// frameHead is a raw frame header, for frames the Framer cannot write.
func frameHead(length int, typ http2.FrameType, flags http2.Flags, id uint32) []byte {
	var b [frameHeaderLen]byte
	putFrameHeader(b[:], length, frameType(typ), uint8(flags), id)
	return b[:]
}

func settingsPayload(s ...http2.Setting) []byte {
	var b []byte
	for _, x := range s {
		b = binary.BigEndian.AppendUint16(b, uint16(x.ID))
		b = binary.BigEndian.AppendUint32(b, x.Val)
	}
	return b
}

func TestServerConnectionErrors(t *testing.T) {
	f := newFixture(t, nil)
	tests := []struct {
		name string
		// noSettings leaves the client's SETTINGS to send.
		noSettings bool
		send       func(p *h2Peer)
		want       http2.ErrCode
	}{
		{
			name: "first frame PING", noSettings: true,
			send: func(p *h2Peer) { p.check(p.fr.WritePing(false, [8]byte{})) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "first frame SETTINGS ack", noSettings: true,
			send: func(p *h2Peer) { p.check(p.fr.WriteSettingsAck()) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "first frame HEADERS", noSettings: true,
			send: func(p *h2Peer) { p.connect(1, netip.MustParseAddrPort("127.0.0.1:1")) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "DATA over max frame size",
			// The header is enough: the server reads no further.
			send: func(p *h2Peer) { p.write(frameHead(maxFrameSize+1, http2.FrameData, 0, 1)) },
			want: http2.ErrCodeFrameSize,
		},
		{
			name: "PING over max frame size",
			send: func(p *h2Peer) { p.write(frameHead(maxAllowedFrame, http2.FramePing, 0, 0)) },
			want: http2.ErrCodeFrameSize,
		},
		{
			name: "DATA on stream 0",
			send: func(p *h2Peer) { p.check(p.fr.WriteData(0, false, []byte("x"))) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "DATA on idle stream",
			send: func(p *h2Peer) { p.check(p.fr.WriteData(5, false, []byte("x"))) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "DATA padded beyond its payload",
			send: func(p *h2Peer) {
				p.write(append(frameHead(2, http2.FrameData, http2.FlagDataPadded, 1), 5, 'x'))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "HEADERS on stream 0",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 0, BlockFragment: p.block(":method", "CONNECT"), EndHeaders: true}))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "HEADERS on a server stream id",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: p.block(":method", "CONNECT"), EndHeaders: true}))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "PUSH_PROMISE from a client",
			send: func(p *h2Peer) {
				p.check(p.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: p.block(":method", "GET"), EndHeaders: true}))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "CONTINUATION without HEADERS",
			send: func(p *h2Peer) { p.check(p.fr.WriteContinuation(1, true, p.block(":method", "CONNECT"))) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "CONTINUATION on another stream",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block(":method", "CONNECT")}))
				p.check(p.fr.WriteContinuation(3, true, nil))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "DATA inside a header block",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block(":method", "CONNECT")}))
				p.check(p.fr.WriteData(1, false, []byte("x")))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "CONTINUATION flood",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block(":method", "CONNECT")}))
				for range 10 * maxBlockFrames {
					if p.fr.WriteContinuation(1, false, nil) != nil {
						return // the server hung up
					}
				}
			},
			want: http2.ErrCodeEnhanceYourCalm,
		},
		{
			name: "header block over the limit",
			send: func(p *h2Peer) {
				big := p.block("x-big", string(bytes.Repeat([]byte("a"), 16<<10)))
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block(":method", "CONNECT")}))
				for range 2 * maxHeaderBlock / len(big) {
					if p.fr.WriteContinuation(1, false, big) != nil {
						return
					}
				}
			},
			want: http2.ErrCodeEnhanceYourCalm,
		},
		{
			name: "garbage HPACK",
			send: func(p *h2Peer) {
				// An indexed field whose index is beyond both tables.
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0x0f}, EndHeaders: true}))
			},
			want: http2.ErrCodeCompression,
		},
		{
			name: "HPACK table size update over the limit",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x3f, 0xe1, 0xff, 0x03}, EndHeaders: true}))
			},
			want: http2.ErrCodeCompression,
		},
		{
			name: "SETTINGS initial window over 2^31-1",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31}))
			},
			want: http2.ErrCodeFlowControl,
		},
		{
			name: "SETTINGS max frame size below 16384",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16383}))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "SETTINGS max frame size over 2^24-1",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 24}))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "SETTINGS enable push 2",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2}))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "SETTINGS not a multiple of 6",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 4, 0, 0, 0}))
			},
			want: http2.ErrCodeFrameSize,
		},
		{
			name: "SETTINGS ack with a payload",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteRawFrame(http2.FrameSettings, http2.FlagSettingsAck, 0, settingsPayload(http2.Setting{ID: 1, Val: 1})))
			},
			want: http2.ErrCodeFrameSize,
		},
		{
			name: "SETTINGS on a stream",
			send: func(p *h2Peer) {
				p.check(p.fr.WriteRawFrame(http2.FrameSettings, 0, 1, nil))
			},
			want: http2.ErrCodeProtocol,
		},
		{
			name: "WINDOW_UPDATE of 0 on the connection",
			send: func(p *h2Peer) { p.check(p.fr.WriteWindowUpdate(0, 0)) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "WINDOW_UPDATE overflowing the connection window",
			send: func(p *h2Peer) { p.check(p.fr.WriteWindowUpdate(0, maxWindow)) },
			want: http2.ErrCodeFlowControl,
		},
		{
			name: "WINDOW_UPDATE on an idle stream",
			send: func(p *h2Peer) { p.check(p.fr.WriteWindowUpdate(99, 1)) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "WINDOW_UPDATE of 3 bytes",
			send: func(p *h2Peer) { p.check(p.fr.WriteRawFrame(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 1})) },
			want: http2.ErrCodeFrameSize,
		},
		{
			name: "PING of 7 bytes",
			send: func(p *h2Peer) { p.check(p.fr.WriteRawFrame(http2.FramePing, 0, 0, make([]byte, 7))) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "RST_STREAM on an idle stream",
			send: func(p *h2Peer) { p.check(p.fr.WriteRSTStream(7, http2.ErrCodeCancel)) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "RST_STREAM on stream 0",
			send: func(p *h2Peer) { p.check(p.fr.WriteRSTStream(0, http2.ErrCodeCancel)) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "PRIORITY of 4 bytes",
			send: func(p *h2Peer) { p.check(p.fr.WriteRawFrame(http2.FramePriority, 0, 1, make([]byte, 4))) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "GOAWAY on a stream",
			send: func(p *h2Peer) { p.check(p.fr.WriteRawFrame(http2.FrameGoAway, 0, 1, make([]byte, 8))) },
			want: http2.ErrCodeProtocol,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := f.rawPeer(t, f.addr)
			p.write([]byte(http2.ClientPreface))
			if !tt.noSettings {
				p.check(p.fr.WriteSettings())
			}
			tt.send(p)
			p.wantGoAway(tt.want)
			f.wantTunnel(t, f.addr, f.allowed)
		})
	}
	if got := f.dials.Load(); got != int32(len(tests)) {
		// One per check of a well-behaved tunnel, none for the hostile
		// peers.
		t.Errorf("upstream dials: got %d, want %d", got, len(tests))
	}
}

// TestServerInitialWindowOverflow changes the initial window so that an
// open stream's send window would exceed 2^31-1: a connection error
// FLOW_CONTROL_ERROR (RFC 9113 section 6.9.2).
func TestServerInitialWindowOverflow(t *testing.T) {
	f := newFixture(t, nil)
	p := f.rawPeer(t, f.addr)
	p.write([]byte(http2.ClientPreface))
	p.check(p.fr.WriteSettings())
	p.connect(1, f.allowed)
	p.check(p.fr.WriteWindowUpdate(1, maxWindow-defaultWindow))
	p.check(p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: defaultWindow + 1}))
	p.wantGoAway(http2.ErrCodeFlowControl)
	f.wantTunnel(t, f.addr, f.allowed)
}

func TestServerWrongPreface(t *testing.T) {
	f := newFixture(t, nil)
	tests := []struct {
		name    string
		preface string
	}{
		{"HTTP/1.1", "CONNECT 1.2.3.4:5 HTTP/1"},
		{"one byte off", http2.ClientPreface[:len(http2.ClientPreface)-1] + "X"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := f.rawPeer(t, f.addr)
			if len(tt.preface) != len(http2.ClientPreface) {
				t.Fatalf("test preface of %d bytes, want %d", len(tt.preface), len(http2.ClientPreface))
			}
			p.write([]byte(tt.preface))
			got, err := io.ReadAll(p.tc)
			if os.IsTimeout(err) || len(got) != 0 {
				t.Errorf("after a wrong preface: got %q, %v; want the connection closed without a frame", got, err)
			}
			f.wantTunnel(t, f.addr, f.allowed)
		})
	}
}

func TestServerPing(t *testing.T) {
	f := newFixture(t, nil)
	p := f.newPeer(t, f.addr)
	want := [8]byte{'a', 'm', 'b', 'i', 't', 0, 0xff, 7}
	p.check(p.fr.WritePing(false, want))
	fm := p.until("PING", func(fm http2.Frame) bool {
		_, ok := fm.(*http2.PingFrame)
		return ok
	}).(*http2.PingFrame)
	if !fm.IsAck() || fm.Data != want {
		t.Errorf("PING answer: got ack %v payload %q, want ack true payload %q", fm.IsAck(), fm.Data, want)
	}
	// An unsolicited acknowledgement is ignored.
	p.check(p.fr.WritePing(true, want))
	p.connect(1, f.allowed)
	if got := p.wantStatus(1); got != "200" {
		t.Errorf("CONNECT after a PING ack: got status %q, want 200", got)
	}
	p.echo(1, "after ping")
}

// TestServerStreamErrors checks errors that end one stream and not its
// connection: the peer gets RST_STREAM and its other stream goes on.
func TestServerStreamErrors(t *testing.T) {
	f := newFixture(t, nil)
	tests := []struct {
		name string
		send func(p *h2Peer, id uint32)
		want http2.ErrCode
	}{
		{
			name: "WINDOW_UPDATE of 0",
			send: func(p *h2Peer, id uint32) { p.check(p.fr.WriteWindowUpdate(id, 0)) },
			want: http2.ErrCodeProtocol,
		},
		{
			name: "WINDOW_UPDATE overflowing the stream window",
			send: func(p *h2Peer, id uint32) { p.check(p.fr.WriteWindowUpdate(id, maxWindow)) },
			want: http2.ErrCodeFlowControl,
		},
		{
			name: "DATA after END_STREAM",
			send: func(p *h2Peer, id uint32) {
				p.check(p.fr.WriteData(id, true, nil))
				p.check(p.fr.WriteData(id, false, []byte("x")))
			},
			want: http2.ErrCodeStreamClosed,
		},
		{
			name: "trailers without END_STREAM",
			send: func(p *h2Peer, id uint32) {
				p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block("x-trailer", "1"), EndHeaders: true}))
			},
			want: http2.ErrCodeProtocol,
		},
	}
	// The upstream keeps each connection open after the client's
	// END_STREAM, so that no stream ends on its own during a case.
	up := holdingUpstream(t)
	p := f.newPeer(t, f.addr)
	// Stream 1 stays open through all the cases.
	p.connect(1, f.allowed)
	if got := p.wantStatus(1); got != "200" {
		t.Fatalf("CONNECT: got status %q, want 200", got)
	}
	id := uint32(3)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.t = t
			p.connect(id, up, "x-test-closed", "1") // the fixture approves it
			if got := p.wantStatus(id); got != "200" {
				t.Fatalf("CONNECT: got status %q, want 200", got)
			}
			tt.send(p, id)
			p.wantRST(id, tt.want)
			p.echo(1, "the other stream goes on after "+tt.name)
			id += 2
		})
	}
	// Whoever noticed a stream's end last (the reading goroutine, the
	// tunnel's copy loops) sends no second RST_STREAM.
	p.t = t
	ping := [8]byte{'l', 'a', 's', 't'}
	p.check(p.fr.WritePing(false, ping))
	p.until("PING ack", func(fm http2.Frame) bool {
		pf, ok := fm.(*http2.PingFrame)
		return ok && pf.IsAck() && pf.Data == ping
	})
	for sid, n := range p.rst {
		if n != 1 {
			t.Errorf("RST_STREAMs on stream %d: got %d, want 1", sid, n)
		}
	}
}

// TestServerRefusesMalformedCONNECT sends requests RFC 9113 section 8
// calls malformed, or that are not HBONE: the server answers 400 and
// dials nothing.
func TestServerRefusesMalformedCONNECT(t *testing.T) {
	f := newFixture(t, nil)
	target := f.allowed.String()
	tests := []struct {
		name   string
		fields []string
	}{
		{"scheme and path", []string{":method", "CONNECT", ":authority", target, ":scheme", "https", ":path", "/"}},
		{"path only", []string{":method", "CONNECT", ":authority", target, ":path", "/"}},
		{"extended CONNECT", []string{":method", "CONNECT", ":protocol", "websocket", ":authority", target}},
		{"no method", []string{":authority", target}},
		{"method twice", []string{":method", "CONNECT", ":method", "CONNECT", ":authority", target}},
		{"authority twice", []string{":method", "CONNECT", ":authority", target, ":authority", target}},
		{"no authority", []string{":method", "CONNECT"}},
		{"uppercase header name", []string{":method", "CONNECT", ":authority", target, "X-Forwarded-For", "10.0.0.1"}},
		{"uppercase pseudo-header", []string{":METHOD", "CONNECT", ":authority", target}},
		{"pseudo-header after a regular one", []string{":method", "CONNECT", "forwarded", "for=10.0.0.1", ":authority", target}},
		{"unknown pseudo-header", []string{":method", "CONNECT", ":authority", target, ":status", "200"}},
		{"NUL in a value", []string{":method", "CONNECT", ":authority", target, "forwarded", "a\x00b"}},
		{"newline in a value", []string{":method", "CONNECT", ":authority", target, "forwarded", "a\r\nx-injected: 1"}},
		{"space in a name", []string{":method", "CONNECT", ":authority", target, "x forwarded", "1"}},
		{"GET", []string{":method", "GET", ":authority", target, ":scheme", "https", ":path", "/"}},
		{"connection header", []string{":method", "CONNECT", ":authority", target, "connection", "close"}},
		{"transfer-encoding", []string{":method", "CONNECT", ":authority", target, "transfer-encoding", "chunked"}},
		{"upgrade", []string{":method", "CONNECT", ":authority", target, "upgrade", "websocket"}},
		{"te other than trailers", []string{":method", "CONNECT", ":authority", target, "te", "gzip"}},
	}
	p := f.newPeer(t, f.addr)
	id := uint32(1)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.t = t
			p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(tt.fields...), EndHeaders: true}))
			if got := p.wantStatus(id); got != "400" {
				t.Errorf("got status %q, want 400", got)
			}
			id += 2
		})
	}
	if got := f.dials.Load(); got != 0 {
		t.Errorf("upstream dials for malformed requests: got %d, want 0", got)
	}
	p.t = t
	p.connect(id, f.allowed)
	if got := p.wantStatus(id); got != "200" {
		t.Errorf("well-formed CONNECT on the same connection: got status %q, want 200", got)
	}
	p.echo(id, "well-formed")
}

// gate is an Authorize hook that holds every call until opened, and
// counts the calls running at once. Once open it approves allow only.
type gate struct {
	allow   netip.AddrPort
	release chan struct{}
	once    sync.Once
	entered chan struct{}
	running atomic.Int32
	peak    atomic.Int32
	calls   atomic.Int32
}

func newGate(t *testing.T, allow netip.AddrPort) *gate {
	g := &gate{allow: allow, release: make(chan struct{}), entered: make(chan struct{}, 4096)}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) authorize(_ context.Context, r *Request) error {
	g.calls.Add(1)
	n := g.running.Add(1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	g.entered <- struct{}{}
	<-g.release
	g.running.Add(-1)
	if r.Target == g.allow {
		return nil
	}
	return ErrDenied
}

// waitEntered waits until n calls have entered the gate.
func (g *gate) waitEntered(t *testing.T, n int) {
	t.Helper()
	timeout := time.NewTimer(peerTimeout)
	defer timeout.Stop()
	for i := range n {
		select {
		case <-g.entered:
		case <-timeout.C:
			t.Fatalf("Authorize calls: got %d, want %d", i, n)
		}
	}
}

func allowAll(context.Context, *Request) error { return nil }

func dialUpstream(ctx context.Context, r *Request) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", r.Target.String())
}

// gatedServer starts a Server whose Authorize is g.
func (f *fixture) gatedServer(t *testing.T, g *gate) netip.AddrPort {
	t.Helper()
	return f.serve(t, &Server{Handler: proxy(g.authorize, dialUpstream)})
}

// sendData sends n bytes on stream id in frames of the default size.
func (p *h2Peer) sendData(id uint32, n int) {
	p.t.Helper()
	buf := make([]byte, defaultFrameSize)
	for n > 0 {
		k := min(n, len(buf))
		p.check(p.fr.WriteData(id, false, buf[:k]))
		n -= k
	}
}

// TestServerStreamWindow sends more DATA than the stream window on a
// stream nobody reads yet: the stream is reset, the connection lives on.
func TestServerStreamWindow(t *testing.T) {
	f := newFixture(t, nil)
	g := newGate(t, f.allowed)
	addr := f.gatedServer(t, g)
	p := f.newPeer(t, addr)
	p.connect(1, f.allowed)
	p.connect(3, f.allowed)
	g.waitEntered(t, 2)
	p.sendData(1, streamWindow+1)
	p.wantRST(1, http2.ErrCodeFlowControl)
	g.open()
	if got := p.wantStatus(3); got != "200" {
		t.Fatalf("CONNECT on the other stream: got status %q, want 200", got)
	}
	p.echo(3, "the other stream goes on")
}

// TestServerConnectionWindow sends more DATA than the connection window,
// no stream exceeding its own: the connection ends with
// FLOW_CONTROL_ERROR and other connections are unaffected.
func TestServerConnectionWindow(t *testing.T) {
	f := newFixture(t, nil)
	g := newGate(t, f.allowed)
	addr := f.gatedServer(t, g)
	p := f.newPeer(t, addr)
	const streams = connWindow/streamWindow + 1
	for i := range streams {
		p.connect(uint32(2*i+1), f.allowed)
	}
	g.waitEntered(t, streams)
	for i := range streams - 1 {
		p.sendData(uint32(2*i+1), streamWindow)
	}
	p.sendData(2*streams-1, 1)
	p.wantGoAway(http2.ErrCodeFlowControl)
	g.open()
	f.wantTunnel(t, addr, f.allowed)
}

// TestServerStreamLimit opens one stream more than the server allows at
// once: the extra one is refused, the others tunnel.
func TestServerStreamLimit(t *testing.T) {
	f := newFixture(t, nil)
	p := f.newPeer(t, f.addr)
	for i := range maxConcurrentStreams + 1 {
		p.connect(uint32(2*i+1), f.allowed)
	}
	const extra = 2*maxConcurrentStreams + 1
	status := map[uint32]string{}
	refused := false
	for len(status) < maxConcurrentStreams || !refused {
		fm, err := p.next()
		if err != nil {
			t.Fatalf("read frames: %v after %d responses, refused %v", err, len(status), refused)
		}
		switch fm := fm.(type) {
		case *http2.MetaHeadersFrame:
			status[fm.StreamID] = fm.PseudoValue("status")
		case *http2.RSTStreamFrame:
			if fm.StreamID != extra || fm.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("got RST_STREAM %d %v, want only %d %v", fm.StreamID, fm.ErrCode, extra, http2.ErrCodeRefusedStream)
			}
			refused = true
		default:
			t.Fatalf("got %s, want responses", describe(fm))
		}
	}
	for i := range maxConcurrentStreams {
		if id := uint32(2*i + 1); status[id] != "200" {
			t.Errorf("stream %d: got status %q, want 200", id, status[id])
		}
	}
	if s, ok := status[extra]; ok {
		t.Errorf("refused stream %d: got status %q, want none", extra, s)
	}
	for i := range maxConcurrentStreams {
		p.check(p.fr.WriteData(uint32(2*i+1), false, binary.BigEndian.AppendUint32(nil, uint32(i))))
	}
	echoed := map[uint32][]byte{}
	for n := 0; n < maxConcurrentStreams; {
		fm := p.until("DATA", func(fm http2.Frame) bool {
			_, ok := fm.(*http2.DataFrame)
			return ok
		}).(*http2.DataFrame)
		id := fm.StreamID
		echoed[id] = append(echoed[id], fm.Data()...)
		if len(echoed[id]) == 4 {
			n++
		}
	}
	for i := range maxConcurrentStreams {
		id := uint32(2*i + 1)
		if got, want := echoed[id], binary.BigEndian.AppendUint32(nil, uint32(i)); !bytes.Equal(got, want) {
			t.Errorf("echo on stream %d: got %x, want %x", id, got, want)
		}
	}
}

// trackedUpstream is an echo server on loopback that reports each
// connection the server closes.
func trackedUpstream(t *testing.T) (netip.AddrPort, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ended := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
				select {
				case ended <- struct{}{}:
				default: // more than the test waits for
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), ended
}

// holdingUpstream is an echo server on loopback that keeps each
// connection open after it reads EOF, until the test ends.
func holdingUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	end := make(chan struct{})
	t.Cleanup(func() {
		close(end)
		ln.Close()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				<-end
				c.Close()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestServerClientResetsStream resets a tunnel stream mid-transfer: the
// server closes that stream's upstream connection, and another stream on
// the same connection goes on.
func TestServerClientResetsStream(t *testing.T) {
	f := newFixture(t, nil)
	up, ended := trackedUpstream(t)
	p := f.newPeer(t, f.addr)
	for _, id := range []uint32{1, 3} {
		p.connect(id, up, "x-test-closed", "1") // the fixture approves it
		if got := p.wantStatus(id); got != "200" {
			t.Fatalf("CONNECT on stream %d: got status %q, want 200", id, got)
		}
	}
	p.echo(1, "mid-transfer")
	p.check(p.fr.WriteData(1, false, []byte("more, never read")))
	p.check(p.fr.WriteRSTStream(1, http2.ErrCodeCancel))
	select {
	case <-ended:
	case <-time.After(peerTimeout):
		t.Fatal("the upstream of the reset stream is still open")
	}
	p.echo(3, "the other stream goes on")
	select {
	case <-ended:
		t.Error("the upstream of the other stream was closed too")
	default:
	}
	// The tunnel closed the stream before its upstream, and control
	// frames go out ahead of DATA: an answer to the reset would have
	// arrived before the echo.
	if n := p.rst[1]; n != 0 {
		t.Errorf("RST_STREAMs answering the client's: got %d, want none (RFC 9113 section 5.4.2)", n)
	}
}

// TestServerRapidReset opens streams and resets each at once, many more
// than the stream limit ("rapid reset", CVE-2023-44487): the handlers
// running at once never exceed the limit, the streams beyond it are
// refused, and once half of at least prematureMinStreams streams ended
// prematurely the connection is ended with GOAWAY ENHANCE_YOUR_CALM,
// after which the server goes on serving other connections.
func TestServerRapidReset(t *testing.T) {
	f := newFixture(t, nil)
	g := newGate(t, f.allowed)
	addr := f.gatedServer(t, g)
	p := f.newPeer(t, addr)
	const streams = 4 * maxConcurrentStreams
	denied := netip.MustParseAddrPort("127.0.0.2:80")
	sent := 0
	for i := range streams {
		id := uint32(2*i + 1)
		fields := p.block(":method", "CONNECT", ":authority", denied.String())
		if p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: fields, EndHeaders: true}) != nil ||
			p.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break // the server hung up
		}
		sent++
	}
	ga := p.wantGoAway(http2.ErrCodeEnhanceYourCalm)
	if !strings.Contains(string(ga.DebugData()), "reset or refused within") {
		t.Errorf("GOAWAY debug data: got %q, want the reason", ga.DebugData())
	}
	if last := ga.LastStreamID; last >= uint32(2*streams) || last < uint32(2*prematureMinStreams-1) {
		t.Errorf("GOAWAY last stream: got %d, want the connection ended after %d to %d streams", last, prematureMinStreams, streams)
	}
	if got := g.peak.Load(); got > maxConcurrentStreams {
		t.Errorf("Authorize calls at once: got %d, want at most %d", got, maxConcurrentStreams)
	}
	g.open()
	f.wantTunnel(t, addr, f.allowed)
	t.Logf("client wrote %d streams before the server hung up", sent)
}

// TestServerMadeYouReset provokes the server into resetting stream after
// stream with a protocol error on each (a WINDOW_UPDATE of 0:
// "MadeYouReset", CVE-2025-8671): those resets count as the client's, and
// the connection ends with GOAWAY ENHANCE_YOUR_CALM.
func TestServerMadeYouReset(t *testing.T) {
	defer func(n uint64) { prematureMinStreams = n }(prematureMinStreams)
	prematureMinStreams = 40
	f := newFixture(t, nil)
	p := f.newPeer(t, f.addr)
	for i := range 2 * prematureMinStreams {
		id := uint32(2*i + 1)
		fields := p.block(":method", "CONNECT", ":authority", f.allowed.String())
		if p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: fields, EndHeaders: true}) != nil ||
			p.fr.WriteWindowUpdate(id, 0) != nil {
			break
		}
	}
	p.wantGoAway(http2.ErrCodeEnhanceYourCalm)
	f.wantTunnel(t, f.addr, f.allowed)
}

// TestServerManyStreamsNoResets: streams that end normally, more than
// prematureMinStreams of them on one connection, never count as abuse.
func TestServerManyStreamsNoResets(t *testing.T) {
	defer func(n uint64) { prematureMinStreams = n }(prematureMinStreams)
	prematureMinStreams = 40
	f := newFixture(t, nil)
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * prematureMinStreams {
		c, err := cc.Connect(context.Background(), f.allowed, nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}
}

// TestServerGracefulShutdown checks Shutdown: GOAWAY naming the last
// stream, the open stream goes on to its end, a stream opened after the
// GOAWAY is refused, and Shutdown returns once the open stream ended.
func TestServerGracefulShutdown(t *testing.T) {
	f := newFixture(t, nil)
	s := &Server{
		Handler: proxy(allowAll, dialUpstream),
	}
	addr := f.serve(t, s)
	p := f.newPeer(t, addr)
	p.connect(1, f.allowed)
	if got := p.wantStatus(1); got != "200" {
		t.Fatalf("CONNECT: got status %q, want 200", got)
	}
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	ga := p.until("GOAWAY", func(fm http2.Frame) bool {
		_, ok := fm.(*http2.GoAwayFrame)
		return ok
	}).(*http2.GoAwayFrame)
	if ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Errorf("GOAWAY: got %v last stream %d, want %v last stream 1", ga.ErrCode, ga.LastStreamID, http2.ErrCodeNo)
	}
	p.connect(3, f.allowed)
	p.wantRST(3, http2.ErrCodeRefusedStream)
	p.echo(1, "after GOAWAY")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream open, want it to wait", err)
	default:
	}
	p.check(p.fr.WriteData(1, true, nil))
	p.until("END_STREAM on stream 1", func(fm http2.Frame) bool {
		d, ok := fm.(*http2.DataFrame)
		return ok && d.StreamID == 1 && d.StreamEnded()
	})
	p.wantClosed()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: got %v, want nil", err)
		}
	case <-time.After(peerTimeout):
		t.Fatal("Shutdown did not return after the last stream ended")
	}
}

// seenByServer is what a hostile server saw our client do.
type seenByServer struct {
	rst    map[uint32][]http2.ErrCode // RST_STREAMs the client sent
	goAway *http2.ErrCode
	err    error // why reading ended
}

// hostileServer accepts one tunnel connection on loopback as serverID,
// reads our client's preface and, unless noSettings, sends SETTINGS. On
// each request, respond answers with whatever frames it likes. It reads
// until the client hangs up and then reports what it saw.
func hostileServer(t *testing.T, ca *identity.CA, noSettings bool, respond func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32)) (addr netip.AddrPort, firstFrame <-chan struct{}, seen <-chan seenByServer) {
	t.Helper()
	return hostileServerPings(t, ca, noSettings, respond, nil)
}

// hostileServerPings is hostileServer that also hands each PING (not
// acknowledgements) to onPing, when set; without it PINGs go unanswered.
func hostileServerPings(t *testing.T, ca *identity.CA, noSettings bool, respond func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32), onPing func(fr *http2.Framer, data [8]byte)) (addr netip.AddrPort, firstFrame <-chan struct{}, seen <-chan seenByServer) {
	t.Helper()
	cert, err := ca.Issue(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	seenc := make(chan seenByServer, 1)
	first := make(chan struct{})
	go func() {
		s := seenByServer{rst: map[uint32][]http2.ErrCode{}}
		defer func() { seenc <- s }()
		c, err := ln.Accept()
		if err != nil {
			s.err = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(peerTimeout))
		tc := tls.Server(c, &tls.Config{
			Certificates: []tls.Certificate{*cert},
			NextProtos:   []string{ALPN},
			ClientAuth:   tls.RequireAnyClientCert,
		})
		pre := make([]byte, len(http2.ClientPreface))
		if _, s.err = io.ReadFull(tc, pre); s.err != nil {
			return
		}
		fr := http2.NewFramer(tc, tc)
		fr.AllowIllegalWrites = true
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var hb bytes.Buffer
		he := hpack.NewEncoder(&hb)
		enc := func(kv ...string) []byte {
			hb.Reset()
			for i := 0; i < len(kv); i += 2 {
				he.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return bytes.Clone(hb.Bytes())
		}
		if !noSettings {
			fr.WriteSettings()
		}
		for i := 0; ; i++ {
			fm, err := fr.ReadFrame()
			if err != nil {
				s.err = err
				return
			}
			if i == 0 {
				close(first)
			}
			switch fm := fm.(type) {
			case *http2.SettingsFrame:
				if !fm.IsAck() && !noSettings {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				respond(fr, enc, fm.StreamID)
			case *http2.PingFrame:
				if onPing != nil && !fm.IsAck() {
					onPing(fr, fm.Data)
				}
			case *http2.RSTStreamFrame:
				s.rst[fm.StreamID] = append(s.rst[fm.StreamID], fm.ErrCode)
			case *http2.GoAwayFrame:
				code := fm.ErrCode
				s.goAway = &code
			}
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), first, seenc
}

// dialHostile dials addr with our client as clientID.
func dialHostile(ctx context.Context, t *testing.T, ca *identity.CA, addr netip.AddrPort) (*ClientConn, error) {
	t.Helper()
	cert, err := ca.Issue(clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return Dial(ctx, addr, ClientConfig{Certificate: cert, Verifier: &identity.Verifier{Roots: ca.Roots()}, Expected: serverID})
}

func waitSeen(t *testing.T, seen <-chan seenByServer) seenByServer {
	t.Helper()
	select {
	case s := <-seen:
		return s
	case <-time.After(peerTimeout + time.Second):
		t.Fatal("the hostile server did not finish")
		return seenByServer{}
	}
}

func testCA(t *testing.T) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestClientNoSettings dials a server that never sends SETTINGS: Dial
// gives up when its context ends rather than hanging.
func TestClientNoSettings(t *testing.T) {
	ca := testCA(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addr, firstFrame, seen := hostileServer(t, ca, true, nil)
	type result struct {
		cc  *ClientConn
		err error
	}
	res := make(chan result, 1)
	go func() {
		cc, err := dialHostile(ctx, t, ca, addr)
		res <- result{cc, err}
	}()
	// Once the server has read the client's SETTINGS, the client waits
	// for the server's: end the wait.
	<-firstFrame
	cancel()
	r := <-res
	if r.err == nil {
		r.cc.Close()
		t.Fatal("Dial: got a connection, want an error")
	}
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("Dial: got %v, want an error wrapping context.Canceled", r.err)
	}
	waitSeen(t, seen)
}

// TestClientHostileResponses answers our client's CONNECT in broken or
// refusing ways; Connect fails with the right error, resets the stream
// where the response was malformed, and never hangs.
func TestClientHostileResponses(t *testing.T) {
	ca := testCA(t)
	tests := []struct {
		name    string
		respond func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32)
		check   func(t *testing.T, err error)
		// rst is the RST_STREAM code the server must see, if any.
		rst *http2.ErrCode
		// noRST says the server must see none: the stream was reset or
		// refused by the server, or the connection failed.
		noRST bool
		// goAway is the GOAWAY code the server must see, if any.
		goAway *http2.ErrCode
	}{
		{
			name: "no :status",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc("content-type", "text/plain"), EndHeaders: true})
			},
			check: wantResetError(http2.ErrCodeProtocol),
			rst:   code(http2.ErrCodeProtocol),
		},
		{
			name: ":status not a number",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(":status", "2xx"), EndHeaders: true})
			},
			check: wantResetError(http2.ErrCodeProtocol),
			rst:   code(http2.ErrCodeProtocol),
		},
		{
			name: "DATA before HEADERS",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteData(id, false, []byte("early"))
			},
			check: wantResetError(http2.ErrCodeProtocol),
			rst:   code(http2.ErrCodeProtocol),
		},
		{
			name: "END_STREAM before HEADERS",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteData(id, true, nil)
			},
			check: wantResetError(http2.ErrCodeProtocol),
			rst:   code(http2.ErrCodeProtocol),
		},
		{
			name: "RST_STREAM REFUSED_STREAM",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrRefusedStream) {
					t.Errorf("got %v, want ErrRefusedStream", err)
				}
			},
			noRST: true,
		},
		{
			name: "RST_STREAM CANCEL",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteRSTStream(id, http2.ErrCodeCancel)
			},
			check: func(t *testing.T, err error) {
				var re *ResetError
				if !errors.As(err, &re) || !re.Remote || re.Code != uint32(http2.ErrCodeCancel) || errors.Is(err, ErrRefusedStream) {
					t.Errorf("got %v, want a remote ResetError CANCEL, not ErrRefusedStream", err)
				}
			},
			noRST: true,
		},
		{
			name: "GOAWAY before the response",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteGoAway(0, http2.ErrCodeNo, nil)
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrRefusedStream) {
					t.Errorf("got %v, want ErrRefusedStream", err)
				}
			},
			noRST: true,
		},
		{
			name: "status 403 with a body",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(":status", "403"), EndHeaders: true})
				fr.WriteData(id, true, []byte("go away\n"))
			},
			check: wantStatusError(http.StatusForbidden),
		},
		{
			name: "status 503 ending the stream",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(":status", "503"), EndHeaders: true, EndStream: true})
			},
			check: wantStatusError(http.StatusServiceUnavailable),
		},
		{
			name: "informational then 401",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(":status", "103"), EndHeaders: true})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(":status", "401"), EndHeaders: true})
			},
			check: wantStatusError(http.StatusUnauthorized),
		},
		{
			name: "PUSH_PROMISE",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: 2, BlockFragment: enc(":method", "GET"), EndHeaders: true})
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrConnClosed) {
					t.Errorf("got %v, want ErrConnClosed", err)
				}
			},
			goAway: code(http2.ErrCodeProtocol),
			noRST:  true,
		},
		{
			name: "HEADERS on a server stream id",
			respond: func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: enc(":status", "200"), EndHeaders: true})
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrConnClosed) {
					t.Errorf("got %v, want ErrConnClosed", err)
				}
			},
			goAway: code(http2.ErrCodeProtocol),
			noRST:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, _, seen := hostileServer(t, ca, false, tt.respond)
			cc, err := dialHostile(t.Context(), t, ca, addr)
			if err != nil {
				t.Fatal(err)
			}
			// The deadline is a safety net: no case waits for it.
			ctx, cancel := context.WithTimeout(t.Context(), peerTimeout)
			defer cancel()
			c, err := cc.Connect(ctx, netip.MustParseAddrPort("10.0.0.7:8080"), nil)
			if err == nil {
				c.Close()
				t.Fatal("Connect: got a stream, want an error")
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Connect: got %v, want an answer to the response", err)
			}
			tt.check(t, err)
			cc.Close()
			s := waitSeen(t, seen)
			if got := s.rst[1]; tt.rst != nil && (len(got) != 1 || got[0] != *tt.rst) {
				t.Errorf("RST_STREAMs the server saw: got %v, want one %v", got, *tt.rst)
			}
			if got := s.rst[1]; tt.noRST && len(got) != 0 {
				t.Errorf("RST_STREAMs the server saw: got %v, want none", got)
			}
			if tt.goAway != nil && (s.goAway == nil || *s.goAway != *tt.goAway) {
				t.Errorf("GOAWAY the server saw: got %v, want %v", s.goAway, *tt.goAway)
			}
		})
	}
}

func code(c http2.ErrCode) *http2.ErrCode { return &c }

func wantResetError(code http2.ErrCode) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		t.Helper()
		var re *ResetError
		if !errors.As(err, &re) || re.Remote || re.Code != uint32(code) {
			t.Errorf("got %v, want a local ResetError %v", err, code)
		}
		if StatusCode(err) != 0 {
			t.Errorf("got %v, want no StatusError", err)
		}
	}
}

func wantStatusError(status int) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		t.Helper()
		if got := StatusCode(err); got != status {
			t.Errorf("got %v, want status %d", err, status)
		}
	}
}

// TestClientGoAwayInFlight has the server send GOAWAY naming an earlier
// stream while a CONNECT is in flight: that Connect fails with
// ErrRefusedStream, the connection takes no new streams, and the
// earlier stream goes on.
func TestClientGoAwayInFlight(t *testing.T) {
	ca := testCA(t)
	addr, _, seen := hostileServer(t, ca, false, func(fr *http2.Framer, enc func(kv ...string) []byte, id uint32) {
		if id == 1 {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":status", "200"), EndHeaders: true})
			return
		}
		fr.WriteGoAway(1, http2.ErrCodeNo, nil)
		fr.WriteData(1, true, []byte("still here"))
	})
	cc, err := dialHostile(t.Context(), t, ca, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	first, err := cc.Connect(t.Context(), netip.MustParseAddrPort("10.0.0.7:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, err = cc.Connect(t.Context(), netip.MustParseAddrPort("10.0.0.7:8080"), nil)
	if !errors.Is(err, ErrRefusedStream) {
		t.Errorf("Connect in flight at GOAWAY: got %v, want ErrRefusedStream", err)
	}
	if got := cc.Available(); got != 0 {
		t.Errorf("Available() after GOAWAY: got %d, want 0", got)
	}
	if _, err := cc.Connect(t.Context(), netip.MustParseAddrPort("10.0.0.7:8080"), nil); !errors.Is(err, ErrRefusedStream) {
		t.Errorf("Connect after GOAWAY: got %v, want ErrRefusedStream", err)
	}
	got, err := io.ReadAll(first)
	if err != nil || string(got) != "still here" {
		t.Errorf("stream below the GOAWAY: got %q, %v; want %q, EOF", got, err, "still here")
	}
	first.Close()
	cc.Close()
	waitSeen(t, seen)
}

// TestClientResponseAfterAbort is the race of a CONNECT whose context
// ends as its response arrives: the reading goroutine has found the
// stream when Connect gives up and aborts it. Handing over the response
// must not block the reading goroutine (and with it the connection).
func TestClientResponseAfterAbort(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newConn(a, false)
	defer c.Close()
	go io.Copy(io.Discard, b)
	c.mu.Lock()
	st := c.newStreamLocked(1)
	c.mu.Unlock()
	st.abort(context.Canceled)
	done := make(chan error, 1)
	go func() { done <- st.receiveHeaders([]hpack.HeaderField{{Name: ":status", Value: "200"}}, false) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("response HEADERS on an aborted stream: got %v, want nil", err)
		}
	case <-time.After(peerTimeout):
		t.Fatal("response HEADERS on an aborted stream: the reading goroutine blocks")
	}
	if r := <-st.resp; !errors.Is(r.err, context.Canceled) {
		t.Errorf("response of an aborted stream: got %+v, want its abort error", r)
	}
}

// TestServerHPACKBomb sends a header block within the size limit that
// decodes to far more than the header list size the server advertises:
// one large field put in the HPACK table, then referenced by one byte
// each. The server refuses it without acting on it.
func TestServerHPACKBomb(t *testing.T) {
	f := newFixture(t, nil)
	p := f.newPeer(t, f.addr)
	var blk bytes.Buffer
	enc := hpack.NewEncoder(&blk)
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":authority", Value: f.allowed.String()},
		{Name: "x-bomb", Value: string(bytes.Repeat([]byte("b"), 4000))}, // indexed as 62
	} {
		enc.WriteField(hf)
	}
	// Index 62 (0x80|62): the newest entry of the dynamic table.
	blk.Write(bytes.Repeat([]byte{0x80 | 62}, maxHeaderBlock-blk.Len()))
	b := blk.Bytes()
	first := b[:defaultFrameSize]
	p.check(p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first}))
	for b = b[len(first):]; len(b) > 0; {
		n := min(len(b), defaultFrameSize)
		p.check(p.fr.WriteContinuation(1, n == len(b), b[:n]))
		b = b[n:]
	}
	p.wantGoAway(http2.ErrCodeEnhanceYourCalm)
	if got := f.dials.Load(); got != 0 {
		t.Errorf("upstream dials: got %d, want 0", got)
	}
	f.wantTunnel(t, f.addr, f.allowed)
}

// setKeepalive shortens the client keepalive for a test.
func setKeepalive(t *testing.T, interval, timeout time.Duration) {
	t.Helper()
	oi, ot := keepaliveInterval, keepaliveTimeout
	keepaliveInterval, keepaliveTimeout = interval, timeout
	t.Cleanup(func() { keepaliveInterval, keepaliveTimeout = oi, ot })
}

// TestClientKeepaliveUnresponsive dials a server that sends its SETTINGS
// and then nothing, not even an answer to a PING: the client ends the
// connection with ErrPeerUnresponsive, telling the peer with GOAWAY.
func TestClientKeepaliveUnresponsive(t *testing.T) {
	setKeepalive(t, 20*time.Millisecond, 20*time.Millisecond)
	ca := testCA(t)
	addr, _, seen := hostileServer(t, ca, false, nil)
	cc, err := dialHostile(t.Context(), t, ca, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	select {
	case <-cc.c.closed:
	case <-time.After(peerTimeout):
		t.Fatal("connection to a silent peer: still open, want it ended by keepalive")
	}
	if err := cc.Err(); !errors.Is(err, ErrPeerUnresponsive) {
		t.Errorf("Err(): got %v, want ErrPeerUnresponsive", err)
	}
	if cc.Available() != 0 {
		t.Errorf("Available(): got %d, want 0", cc.Available())
	}
	if s := waitSeen(t, seen); s.goAway == nil {
		t.Error("server saw no GOAWAY")
	}
}

// TestClientKeepaliveAnswered: a peer that answers PINGs keeps an idle
// connection open through many keepalive rounds.
func TestClientKeepaliveAnswered(t *testing.T) {
	setKeepalive(t, 10*time.Millisecond, time.Minute)
	ca := testCA(t)
	pings := make(chan struct{}, 100)
	addr, _, _ := hostileServerPings(t, ca, false, nil, func(fr *http2.Framer, data [8]byte) {
		fr.WritePing(true, data)
		pings <- struct{}{}
	})
	cc, err := dialHostile(t.Context(), t, ca, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for i := range 5 {
		select {
		case <-pings:
		case <-time.After(peerTimeout):
			t.Fatalf("keepalive PING %d: none came", i+1)
		}
	}
	if err := cc.Err(); err != nil {
		t.Errorf("after 5 answered PINGs: Err() = %v, want the connection open", err)
	}
}

// TestServerHandshakeBounds floods the server with connections that never
// start TLS: beyond the bound per source a new one is closed as soon as
// it is accepted; beyond the bound in all the one that has waited longest
// is closed. A well-behaved client gets through during either flood, and
// the slots come back when the idle connections go.
func TestServerHandshakeBounds(t *testing.T) {
	f := newFixture(t, nil)
	s := &Server{
		Handler:                proxy(allowAll, dialUpstream),
		MaxHandshakes:          4,
		MaxHandshakesPerSource: 2,
	}
	addr := f.serve(t, s)
	idle := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	wantClosed := func(c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(peerTimeout))
		if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Errorf("connection from %s: got %v, want it closed by the server", c.LocalAddr(), err)
		}
	}
	tunnel := func(src string) error {
		cc, err := Dial(t.Context(), addr, ClientConfig{
			Certificate: f.issue(t, f.ca, clientID, time.Hour), Verifier: f.verifier, Expected: serverID,
			Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}},
		})
		if err != nil {
			return err
		}
		defer cc.Close()
		c, err := cc.Connect(t.Context(), f.allowed, nil)
		if err != nil {
			return err
		}
		return c.Close()
	}
	waitHandshakes := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(peerTimeout); ; time.Sleep(time.Millisecond) {
			s.mu.Lock()
			got := s.pending.Len()
			s.mu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("connections in the handshake: got %d, want %d", got, n)
			}
		}
	}

	oldest := idle("127.0.0.2")
	waitHandshakes(1)
	idle("127.0.0.2")
	waitHandshakes(2)
	wantClosed(idle("127.0.0.2")) // a third from one source
	if err := tunnel("127.0.0.5"); err != nil {
		t.Errorf("well-behaved client from another address during the flood: %v", err)
	}
	idle("127.0.0.3")
	idle("127.0.0.4")
	waitHandshakes(4)
	idle("127.0.0.6") // a fifth in all: the oldest makes room
	wantClosed(oldest)
	if err := tunnel("127.0.0.7"); err != nil {
		t.Errorf("well-behaved client while the bound in all is reached: %v", err)
	}
	if got := s.Shed(); got != 3 {
		t.Errorf("Shed: got %d, want 3 (one over the bound per source, two to make room)", got)
	}
	waitHandshakes(3) // the two newest of the flood, and the last idle one
}

// TestServerGoAwayBeforeItsRefusals: a stream that reaches a server
// shutting down after its GOAWAY was decided is refused (RST_STREAM
// REFUSED_STREAM), and on the wire that refusal comes after the GOAWAY,
// never before: a client learns that the connection takes no more
// streams before it hears of the refusal, so the retry it makes goes to
// a new connection rather than to this one, to be refused again. (The
// refusal overtook the GOAWAY now and then under load, and a pooled
// client's one retry failed the same way: ztunnel's TestHandover saw a
// new connection reset while the server's tunnel drained.) The peer
// opens streams without pause while the server begins to shut down;
// the race is narrow, so it is run many times.
func TestServerGoAwayBeforeItsRefusals(t *testing.T) {
	f := newFixture(t, nil)
	denied := netip.AddrPortFrom(f.allowed.Addr(), f.allowed.Port()+1)
	for trial := range 100 {
		g := newGate(t, f.allowed)
		s := &Server{Handler: proxy(g.authorize, dialUpstream)}
		addr := f.serve(t, s)
		p := f.newPeer(t, addr)
		// The server's SETTINGS, acknowledged before the writer starts
		// (one goroutine writes from then on).
		fm, err := p.fr.ReadFrame()
		if sf, ok := fm.(*http2.SettingsFrame); err != nil || !ok || sf.IsAck() {
			t.Fatalf("trial %d: first frame: got %v, %v; want the server's SETTINGS", trial, fm, err)
		}
		p.check(p.fr.WriteSettingsAck())
		// Streams held in Authorize until the gate opens, fewer than the
		// server's concurrent-stream limit.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			for id := uint32(1); id < 2*maxConcurrentStreams-100; id += 2 {
				fields := []string{":method", "CONNECT", ":authority", denied.String()}
				if p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(fields...), EndHeaders: true}) != nil {
					return
				}
				// PINGs between them keep the server's write lock busy
				// with their acknowledgements, as other streams' frames
				// do on a busy connection.
				for range 20 {
					if p.fr.WritePing(false, [8]byte{}) != nil {
						return
					}
				}
			}
		}()
		g.waitEntered(t, 10)
		ctx, cancel := context.WithCancel(t.Context())
		shut := make(chan error, 1)
		go func() { shut <- s.Shutdown(ctx) }()
		for goAway := false; !goAway; {
			fm, err := p.fr.ReadFrame()
			if err != nil {
				t.Fatalf("trial %d: read frames: %v before a GOAWAY", trial, err)
			}
			switch fm := fm.(type) {
			case *http2.GoAwayFrame:
				goAway = true
			case *http2.RSTStreamFrame:
				t.Fatalf("trial %d: got %s before the GOAWAY, want the GOAWAY first", trial, describe(fm))
			}
		}
		g.open()
		<-wrote
		cancel()
		<-shut
		p.tc.Close()
	}
}
