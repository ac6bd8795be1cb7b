package hbone

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambitmesh/ambit/internal/identity"
)

// TestWireCONNECT speaks HBONE to the server frame by frame, the way a
// peer built on another HTTP/2 stack (Istio's Rust ztunnel uses h2) does:
// TLS 1.3 with ALPN h2 and no SNI, the connection preface, SETTINGS, then
// a HEADERS frame holding only :method CONNECT and :authority, then DATA.
// It checks the server's answer at the same level: a :status 200 HEADERS
// frame without END_STREAM, then the echoed bytes in DATA frames.
func TestWireCONNECT(t *testing.T) {
	f := newFixture(t, nil)
	cert := f.issue(t, f.ca, clientID, time.Hour)
	tc, err := tls.Dial("tcp", f.addr.String(), &tls.Config{
		Certificates:       []tls.Certificate{*cert},
		InsecureSkipVerify: true, // this test checks the wire, not the peer
		NextProtos:         []string{"h2"},
		MinVersion:         tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := tc.ConnectionState().NegotiatedProtocol; got != "h2" {
		t.Fatalf("ALPN: got %q, want h2", got)
	}
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: f.allowed.String()})
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	payload := []byte("over the wire")
	if err := fr.WriteData(1, false, payload); err != nil {
		t.Fatal(err)
	}
	var status string
	var got []byte
	for status == "" || len(got) < len(payload) {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v (status %q, data %q)", err, status, got)
		}
		switch fm := fm.(type) {
		case *http2.SettingsFrame:
			if !fm.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.MetaHeadersFrame:
			if fm.StreamID != 1 {
				t.Fatalf("HEADERS on stream %d, want 1", fm.StreamID)
			}
			if fm.StreamEnded() {
				t.Fatalf("response HEADERS end the stream; want the tunnel open")
			}
			status = fm.PseudoValue("status")
		case *http2.DataFrame:
			got = append(got, fm.Data()...)
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", fm.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY: %v", fm.ErrCode)
		}
	}
	if status != "200" {
		t.Errorf(":status: got %q, want 200", status)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("echo: got %q, want %q", got, payload)
	}
}

// TestWireClientRequest accepts our client's tunnel with a frame-level
// server and checks what a peer on another stack receives: TLS 1.3, ALPN
// h2, no SNI, and a CONNECT whose header block is exactly :method,
// :authority and the headers the caller added.
func TestWireClientRequest(t *testing.T) {
	ca := newFixture(t, nil).ca
	serverCert, err := ca.Issue(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type seen struct {
		sni     string
		version uint16
		fields  []string
	}
	got := make(chan seen, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var s seen
		tc := tls.Server(c, &tls.Config{
			Certificates: []tls.Certificate{*serverCert},
			NextProtos:   []string{"h2"},
			ClientAuth:   tls.RequireAnyClientCert,
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				s.sni = h.ServerName
				return nil, nil
			},
		})
		if err := tc.Handshake(); err != nil {
			got <- s
			return
		}
		s.version = tc.ConnectionState().Version
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(tc, preface); err != nil {
			got <- s
			return
		}
		fr := http2.NewFramer(tc, tc)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		for {
			fm, err := fr.ReadFrame()
			if err != nil {
				got <- s
				return
			}
			switch fm := fm.(type) {
			case *http2.SettingsFrame:
				if !fm.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				for _, hf := range fm.Fields {
					s.fields = append(s.fields, hf.Name+"="+hf.Value)
				}
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: fm.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
				got <- s
				return
			}
		}
	}()
	clientCert, err := ca.Issue(clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := Dial(t.Context(), ln.Addr().(*net.TCPAddr).AddrPort(), ClientConfig{
		Certificate: clientCert, Verifier: &identity.Verifier{Roots: ca.Roots()}, Expected: serverID,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	target := netip.MustParseAddrPort("10.0.0.7:8080")
	go cc.Connect(t.Context(), target, http.Header{HeaderForwarded: {"for=10.0.0.1"}})
	s := <-got
	if s.sni != "" {
		t.Errorf("SNI: got %q, want none", s.sni)
	}
	if s.version != tls.VersionTLS13 {
		t.Errorf("TLS version: got %x, want TLS 1.3", s.version)
	}
	want := []string{":authority=10.0.0.7:8080", ":method=CONNECT", "forwarded=for=10.0.0.1"}
	var fields []string
	for _, f := range s.fields {
		if !strings.HasPrefix(f, "user-agent=") && !strings.HasPrefix(f, "accept-encoding=") {
			fields = append(fields, f)
		}
	}
	slices.Sort(fields)
	if diff := cmp.Diff(want, fields); diff != "" {
		t.Errorf("CONNECT header block (-want +got):\n%s", diff)
	}
}

// TestFirstStreamUsesPeerSettings checks that the first stream on a new
// connection already sends DATA frames of the size the peer allows: the
// HTTP/2 client fixes a stream's frame size when the stream starts, so a
// stream started before the peer's SETTINGS applied would send 16 KiB
// frames for its whole life. The peer here sends its SETTINGS only after
// reading the client's preface, as servers of HTTP/2 with prior knowledge
// do.
func TestFirstStreamUsesPeerSettings(t *testing.T) {
	ca := newFixture(t, nil).ca
	serverCert, err := ca.Issue(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 1 << 20
	type result struct {
		largest uint32 // the largest DATA frame
		total   int
		err     error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		defer func() { got <- r }()
		c, err := ln.Accept()
		if err != nil {
			r.err = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, &tls.Config{
			Certificates: []tls.Certificate{*serverCert},
			NextProtos:   []string{"h2"},
			ClientAuth:   tls.RequireAnyClientCert,
		})
		preface := make([]byte, len(http2.ClientPreface))
		if _, r.err = io.ReadFull(tc, preface); r.err != nil {
			return
		}
		fr := http2.NewFramer(tc, tc)
		fr.SetMaxReadFrameSize(maxFrameSize)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: size})
		fr.WriteWindowUpdate(0, size)
		for r.total < size {
			fm, err := fr.ReadFrame()
			if err != nil {
				r.err = err
				return
			}
			switch fm := fm.(type) {
			case *http2.SettingsFrame:
				if !fm.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				var hb bytes.Buffer
				hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: fm.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
			case *http2.DataFrame:
				r.largest = max(r.largest, fm.Length)
				r.total += len(fm.Data())
			}
		}
	}()
	clientCert, err := ca.Issue(clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := Dial(t.Context(), ln.Addr().(*net.TCPAddr).AddrPort(), ClientConfig{
		Certificate: clientCert, Verifier: &identity.Verifier{Roots: ca.Roots()}, Expected: serverID,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	s, err := cc.Connect(t.Context(), netip.MustParseAddrPort("10.0.0.7:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go s.Write(make([]byte, size))
	r := <-got
	if r.err != nil {
		t.Fatalf("server: %v", r.err)
	}
	if r.largest != maxFrameSize {
		t.Errorf("largest DATA frame of the first stream: got %d bytes, want %d", r.largest, maxFrameSize)
	}
}
