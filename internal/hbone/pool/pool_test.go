package pool

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
)

var (
	src = identity.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "client"}
	dst = identity.Identity{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "server"}
)

type fixture struct {
	key    Key
	target netip.AddrPort
	dials  atomic.Int32
	pool   *Pool
	ca     *identity.CA
	// cert is the client certificate new connections present.
	cert atomic.Pointer[tls.Certificate]
}

// newFixture runs an HBONE server whose every CONNECT is joined to a
// loopback sink that holds the connection open until the client closes.
func newFixture(t *testing.T, maxStreams int, idle time.Duration) *fixture {
	t.Helper()
	ca, serverCert, clientCert := issueCerts(t)
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	v := &identity.Verifier{Roots: ca.Roots()}
	s := &hbone.Server{
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert, nil },
		Verifier:    v,
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request, st *hbone.ServerStream) {
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", r.Target.String())
			if err != nil {
				st.Refuse(http.StatusServiceUnavailable, err)
				return
			}
			if st.Accept() != nil {
				up.Close()
				return
			}
			hbone.Join(st, up)
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	f := &fixture{
		key:    Key{Source: src, Destination: dst, Addr: ln.Addr().(*net.TCPAddr).AddrPort()},
		target: sink.Addr().(*net.TCPAddr).AddrPort(),
		ca:     ca,
	}
	f.cert.Store(clientCert)
	f.pool = &Pool{
		MaxStreams:  maxStreams,
		IdleTimeout: idle,
		Dial: func(ctx context.Context, key Key) (*hbone.ClientConn, error) {
			f.dials.Add(1)
			return hbone.Dial(ctx, key.Addr, hbone.ClientConfig{Certificate: f.cert.Load(), Verifier: v, Expected: key.Destination})
		},
	}
	t.Cleanup(func() { f.pool.Close() })
	return f
}

// issueCerts makes a test CA and certificates of dst (the server) and
// src (the client).
func issueCerts(t *testing.T) (ca *identity.CA, serverCert, clientCert *tls.Certificate) {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if serverCert, err = ca.Issue(dst, time.Hour); err != nil {
		t.Fatal(err)
	}
	if clientCert, err = ca.Issue(src, time.Hour); err != nil {
		t.Fatal(err)
	}
	return ca, serverCert, clientCert
}

func (f *fixture) connectN(t *testing.T, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			conns[i], errs[i] = f.pool.Connect(context.Background(), f.key, f.target, nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

func TestSharedAndCoalesced(t *testing.T) {
	f := newFixture(t, 0, time.Hour)
	f.connectN(t, 50)
	if got := f.dials.Load(); got != 1 {
		t.Errorf("dials for 50 concurrent streams: got %d, want 1", got)
	}
	if got := f.pool.Conns()[f.key]; got != 1 {
		t.Errorf("connections: got %d, want 1", got)
	}
}

func TestStreamLimit(t *testing.T) {
	f := newFixture(t, 2, time.Hour)
	conns := make([]net.Conn, 0, 5)
	for range 5 {
		conns = append(conns, f.connectN(t, 1)...)
	}
	if got := f.pool.Conns()[f.key]; got != 3 {
		t.Errorf("connections for 5 streams at 2 per connection: got %d, want 3", got)
	}
	// A freed slot is reused rather than a new connection dialed.
	conns[0].Close()
	f.connectN(t, 1)
	if got := f.dials.Load(); got != 3 {
		t.Errorf("dials after reusing a freed slot: got %d, want 3", got)
	}
}

func TestIdleClose(t *testing.T) {
	f := newFixture(t, 0, time.Millisecond)
	closed := make(chan Key, 1)
	f.pool.mu.Lock()
	f.pool.onIdleClose = func(k Key) { closed <- k }
	f.pool.mu.Unlock()
	c := f.connectN(t, 1)[0]
	c.Close()
	if got := <-closed; got != f.key {
		t.Errorf("idle close: got key %v, want %v", got, f.key)
	}
	if got := f.pool.Conns()[f.key]; got != 0 {
		t.Errorf("connections after idle close: got %d, want 0", got)
	}
}

func TestDeadConnectionReplaced(t *testing.T) {
	f := newFixture(t, 0, time.Hour)
	f.connectN(t, 1)[0].Close()
	// Kill the pooled connection behind the pool's back.
	f.pool.mu.Lock()
	for _, e := range f.pool.conns[f.key] {
		e.cc.Close()
	}
	f.pool.mu.Unlock()
	c := f.connectN(t, 1)[0]
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatalf("write on a stream after the old connection died: %v", err)
	}
	if got := f.dials.Load(); got != 2 {
		t.Errorf("dials: got %d, want 2 (the dead connection replaced)", got)
	}
}

// After the source's certificate is rotated, new streams go to a new
// connection presenting the new certificate; a stream already open on the
// old connection carries on, and the old connection is closed once idle.
func TestRotatedCertificate(t *testing.T) {
	f := newFixture(t, 0, time.Hour)
	f.pool.Current = func(_ Key, cc *hbone.ClientConn) bool { return cc.Certificate() == f.cert.Load() }
	old := f.connectN(t, 1)[0]

	rotated, err := f.ca.Issue(src, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.cert.Store(rotated)
	f.connectN(t, 1)
	if got := f.dials.Load(); got != 2 {
		t.Errorf("dials after rotation: got %d, want 2", got)
	}
	if got := f.pool.Conns()[f.key]; got != 2 {
		t.Errorf("connections after rotation: got %d, want 2 (old one still carrying its stream)", got)
	}
	f.pool.mu.Lock()
	var certs []*tls.Certificate
	for _, e := range f.pool.conns[f.key] {
		certs = append(certs, e.cc.Certificate())
	}
	f.pool.mu.Unlock()
	if len(certs) != 2 || certs[1] != rotated || certs[0] == rotated {
		t.Errorf("certificates of the pooled connections: got %d, want the old one then the rotated one", len(certs))
	}

	// The stream on the old connection still works.
	if _, err := old.Write([]byte("ping")); err != nil {
		t.Fatalf("write on the stream opened before rotation: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(old, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo on the stream opened before rotation: got %q, %v; want %q", buf, err, "ping")
	}

	// Once its stream ends, the old connection is dropped at the next
	// use of the pool rather than reused.
	old.Close()
	f.connectN(t, 1)
	if got := f.dials.Load(); got != 2 {
		t.Errorf("dials after the old stream ended: got %d, want 2", got)
	}
	if got := f.pool.Conns()[f.key]; got != 1 {
		t.Errorf("connections after the old stream ended: got %d, want 1", got)
	}
}

// TestGoAwayRetried runs a peer that answers the first stream of its
// first connection, then refuses the next with GOAWAY (last stream 1), as
// a shutting-down peer does, or with REFUSED_STREAM alone, as a peer at
// its stream limit does: the refused CONNECT is retried on a new
// connection, not on the one that refused it, and the stream already
// open on the old one carries on.
func TestGoAwayRetried(t *testing.T) {
	for _, mode := range []refusal{refuseGoAway, refuseStream} {
		t.Run(mode.String(), func(t *testing.T) { testRefusalRetried(t, mode) })
	}
}

// refusal is how goAwayPeer refuses the streams after the first.
type refusal int

const (
	refuseNone refusal = iota
	refuseGoAway
	refuseStream
)

func (r refusal) String() string { return [...]string{"none", "GOAWAY", "REFUSED_STREAM"}[r] }

func testRefusalRetried(t *testing.T, mode refusal) {
	ca, serverCert, clientCert := issueCerts(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served sync.WaitGroup
	defer served.Wait()
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m := refuseNone
			if n == 0 {
				m = mode
			}
			served.Go(func() { goAwayPeer(c, serverCert, m) })
		}
	}()
	v := &identity.Verifier{Roots: ca.Roots()}
	var dials atomic.Int32
	p := &Pool{Dial: func(ctx context.Context, key Key) (*hbone.ClientConn, error) {
		dials.Add(1)
		return hbone.Dial(ctx, key.Addr, hbone.ClientConfig{Certificate: clientCert, Verifier: v, Expected: key.Destination})
	}}
	defer p.Close()
	key := Key{Source: src, Destination: dst, Addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	target := netip.MustParseAddrPort("10.0.0.1:80")
	first, err := p.Connect(t.Context(), key, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := p.Connect(t.Context(), key, target, nil)
	if err != nil {
		t.Fatalf("CONNECT refused by %s: got %v, want it retried on a new connection", mode, err)
	}
	defer second.Close()
	if got := dials.Load(); got != 2 {
		t.Errorf("dials: got %d, want 2", got)
	}
	for i, c := range []net.Conn{first, second} {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Errorf("stream %d: echo got %v, %v; want [%d]", i, b, err, i)
		}
	}
}

// goAwayPeer serves HBONE frame by frame: it answers CONNECTs 200 and
// echoes DATA, except that with a refusal it answers stream 1 only and
// meets any later stream with GOAWAY or RST_STREAM(REFUSED_STREAM).
func goAwayPeer(c net.Conn, cert *tls.Certificate, mode refusal) {
	defer c.Close()
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13})
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, preface); err != nil {
		return
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch fm := fm.(type) {
		case *http2.SettingsFrame:
			if !fm.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			switch {
			case mode == refuseGoAway && fm.StreamID > 1:
				fr.WriteGoAway(1, http2.ErrCodeNo, nil)
				continue
			case mode == refuseStream && fm.StreamID > 1:
				fr.WriteRSTStream(fm.StreamID, http2.ErrCodeRefusedStream)
				continue
			}
			var hb bytes.Buffer
			hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: fm.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
		case *http2.DataFrame:
			if len(fm.Data()) > 0 {
				fr.WriteData(fm.StreamID, false, fm.Data())
			}
		}
	}
}
