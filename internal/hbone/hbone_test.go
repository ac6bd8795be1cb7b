package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/testutil"
)

var (
	clientID = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "client"}
	serverID = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "server"}
)

// echoServer accepts on loopback and echoes each connection until EOF,
// then closes it.
func echoServer(t testing.TB) netip.AddrPort {
	t.Helper()
	return testutil.ServeTCP(t, "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

// proxy is the handler of a tunnel proxy in one pass: authorize (an
// error wrapping ErrBadRequest answers 400, any other 401), dial (503 on
// an error, or when the stream ended meanwhile), answer 200, join.
func proxy(authorize func(context.Context, *Request) error, dial func(context.Context, *Request) (net.Conn, error)) Handler {
	return HandlerFunc(func(ctx context.Context, r *Request, st *ServerStream) {
		if err := authorize(ctx, r); err != nil {
			code := http.StatusUnauthorized
			if errors.Is(err, ErrBadRequest) {
				code = http.StatusBadRequest
			}
			st.Refuse(code, err)
			return
		}
		if err := ctx.Err(); err != nil {
			// The client reset the stream meanwhile: dial nothing for it.
			st.Refuse(http.StatusServiceUnavailable, fmt.Errorf("stream ended before the dial: %w", err))
			return
		}
		up, err := dial(ctx, r)
		if err != nil {
			st.Refuse(http.StatusServiceUnavailable, err)
			return
		}
		if err := st.Accept(); err != nil {
			up.Close()
			return
		}
		if st.stream == nil {
			up.Close() // FuzzCONNECT: no tunnel to join
			return
		}
		Join(st, up)
	})
}

type fixture struct {
	ca       *identity.CA
	addr     netip.AddrPort // the server's tunnel address
	allowed  netip.AddrPort // the one target Authorize approves
	dials    atomic.Int32
	mu       sync.Mutex
	lastPeer identity.Identity
	verifier *identity.Verifier
}

func newFixture(t testing.TB, serverCert *tls.Certificate) *fixture {
	t.Helper()
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, allowed: echoServer(t), verifier: &identity.Verifier{Roots: ca.Roots()}}
	if serverCert == nil {
		serverCert = f.issue(t, ca, serverID, time.Hour)
	}
	s := &Server{
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert, nil },
		Verifier:    f.verifier,
		Handler: proxy(func(_ context.Context, r *Request) error {
			f.mu.Lock()
			f.lastPeer = r.Peer
			f.mu.Unlock()
			if r.Target == f.allowed || r.Target.Addr() == netip.MustParseAddr("127.0.0.1") && r.Target.Port() != f.allowed.Port() && r.Header.Get("X-Test-Closed") != "" {
				return nil
			}
			return ErrDenied
		}, func(ctx context.Context, r *Request) (net.Conn, error) {
			f.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.Target.String())
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return f
}

func (f *fixture) issue(t testing.TB, ca *identity.CA, id identity.Identity, ttl time.Duration) *tls.Certificate {
	t.Helper()
	c, err := ca.Issue(id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) dial(t *testing.T, cfg ClientConfig) (*ClientConn, error) {
	t.Helper()
	if cfg.Certificate == nil {
		cfg.Certificate = f.issue(t, f.ca, clientID, time.Hour)
	}
	if cfg.Verifier == nil {
		cfg.Verifier = f.verifier
	}
	if cfg.Expected.IsZero() {
		cfg.Expected = serverID
	}
	cc, err := Dial(context.Background(), f.addr, cfg)
	if err == nil {
		t.Cleanup(func() { cc.Close() })
	}
	return cc, err
}

func TestTunnel(t *testing.T) {
	f := newFixture(t, nil)
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if got := cc.Peer(); got != serverID {
		t.Errorf("Peer(): got %s, want %s", got, serverID)
	}
	conn, err := cc.Connect(context.Background(), f.allowed, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := f.dials.Load(); got != 1 {
		t.Errorf("upstream dials when CONNECT returned: got %d, want 1 (200 only after the upstream connected)", got)
	}
	want := bytes.Repeat([]byte("hbone "), 100000)
	go func() {
		conn.Write(want)
		conn.(closeWriter).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("echo: got %d bytes, want %d identical bytes", len(got), len(want))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lastPeer != clientID {
		t.Errorf("server saw peer %s, want %s", f.lastPeer, clientID)
	}
}

func TestManyStreamsOneConn(t *testing.T) {
	f := newFixture(t, nil)
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var conns []net.Conn
	for i := range n {
		c, err := cc.Connect(context.Background(), f.allowed, nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if got := cc.InFlight(); got != n {
		t.Errorf("InFlight(): got %d, want %d", got, n)
	}
	for i, c := range conns {
		msg := []byte{byte(i)}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != byte(i) {
			t.Errorf("stream %d: got %v %v, want %v", i, buf, err, msg)
		}
		c.Close()
	}
}

// rawRequest sends an arbitrary request over a tunnel connection and
// returns the response status.
func rawRequest(t *testing.T, cc *ClientConn, method, authority string) int {
	t.Helper()
	st, err := cc.request(t.Context(), method, authority, nil)
	if err != nil {
		if code := StatusCode(err); code != 0 {
			return code
		}
		t.Fatalf("%s %s: %v", method, authority, err)
	}
	st.Close()
	return http.StatusOK
}

func TestRefusedRequests(t *testing.T) {
	f := newFixture(t, nil)
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		method    string
		authority string
		want      int
	}{
		{"get", http.MethodGet, f.allowed.String(), http.StatusBadRequest},
		{"post", http.MethodPost, f.allowed.String(), http.StatusBadRequest},
		{"host name", http.MethodConnect, "example.com:80", http.StatusBadRequest},
		{"no port", http.MethodConnect, "127.0.0.1", http.StatusBadRequest},
		{"port zero", http.MethodConnect, "127.0.0.1:0", http.StatusBadRequest},
		{"denied", http.MethodConnect, "127.0.0.2:80", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rawRequest(t, cc, tt.method, tt.authority); got != tt.want {
				t.Errorf("%s %s: got status %d, want %d", tt.method, tt.authority, got, tt.want)
			}
		})
	}
	if got := f.dials.Load(); got != 0 {
		t.Errorf("upstream dials for refused requests: got %d, want 0", got)
	}
	_, err = cc.Connect(context.Background(), netip.MustParseAddrPort("127.0.0.2:80"), nil)
	if got := StatusCode(err); got != http.StatusUnauthorized {
		t.Errorf("Connect to a denied target: got %v, want status 401", err)
	}
	// The peer's short reason comes with the status, and no more: the
	// detail is in the server's log.
	if err == nil || !strings.HasSuffix(err.Error(), "status 401 Unauthorized: denied") {
		t.Errorf("Connect to a denied target: got %v, want the peer's short reason, denied, and nothing else", err)
	}
}

func TestUpstreamFailure(t *testing.T) {
	f := newFixture(t, nil)
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cc.Connect(context.Background(), closedPort(t), http.Header{"X-Test-Closed": {"1"}})
	if got := StatusCode(err); got != http.StatusServiceUnavailable {
		t.Errorf("Connect to a closed port: got %v, want status 503", err)
	}
	// The dial error (which tells a port scanner what is there) stays in
	// the server's log.
	if err == nil || !strings.HasSuffix(err.Error(), "status 503 Service Unavailable: destination unavailable") {
		t.Errorf("Connect to a closed port: got %v, want only the short reason", err)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	other, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, nil)
	expired, err := f.ca.IssueValidity(clientID, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  ClientConfig
		// want is the identity error the client's own check finds; nil
		// when the server refuses the client instead.
		want error
	}{
		{name: "wrong san", cfg: ClientConfig{Expected: clientID}, want: identity.ErrWrongIdentity},
		{name: "match refuses", cfg: ClientConfig{Match: func(identity.Identity) error { return errors.New("not this one") }}, want: identity.ErrWrongIdentity},
		{name: "client trusts other root", cfg: ClientConfig{Verifier: &identity.Verifier{Roots: other.Roots()}}, want: identity.ErrUntrustedRoot},
		{name: "client cert from untrusted root", cfg: ClientConfig{Certificate: f.issue(t, other, clientID, time.Hour)}},
		{name: "expired client cert", cfg: ClientConfig{Certificate: expired}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc, err := f.dial(t, tt.cfg)
			if err == nil {
				_, err = cc.Connect(context.Background(), f.allowed, nil)
			}
			if err == nil {
				t.Fatal("got a tunnel, want a refusal")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if got := f.dials.Load(); got != 0 {
		t.Errorf("upstream dials after refused handshakes: got %d, want 0", got)
	}
}

// TestMatch: a client with Match accepts any peer identity Match
// accepts (a SAN prefix, as the waypoint's clusters check it).
func TestMatch(t *testing.T) {
	f := newFixture(t, nil)
	var seen identity.Identity
	cc, err := f.dial(t, ClientConfig{Expected: clientID, Match: func(id identity.Identity) error {
		seen = id
		if !strings.HasPrefix(id.String(), "spiffe://cluster.local/") {
			return errors.New("outside the trust domain")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if seen != serverID || cc.Peer() != serverID {
		t.Errorf("peer: got %v (matcher saw %v), want %v", cc.Peer(), seen, serverID)
	}
}

func TestServerCertRefusals(t *testing.T) {
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := ca.IssueValidity(serverID, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, expired)
	// The fixture's CA differs from the one that signed the server's
	// certificate, so trust ca explicitly to isolate expiry.
	_, err = f.dial(t, ClientConfig{Verifier: &identity.Verifier{Roots: ca.Roots()}})
	if !errors.Is(err, identity.ErrExpired) {
		t.Errorf("dial a server with an expired certificate: got %v, want ErrExpired", err)
	}
}

func TestNoClientCertificate(t *testing.T) {
	f := newFixture(t, nil)
	c, err := tls.Dial("tcp", f.addr.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13})
	if err == nil {
		// TLS 1.3 reports the server's refusal on the first read.
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("handshake without a client certificate: got success, want a refusal")
	}
	if got := f.dials.Load(); got != 0 {
		t.Errorf("upstream dials: got %d, want 0", got)
	}
}

func TestTLS12Refused(t *testing.T) {
	f := newFixture(t, nil)
	cert := f.issue(t, f.ca, clientID, time.Hour)
	_, err := tls.Dial("tcp", f.addr.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}})
	if err == nil {
		t.Fatal("TLS 1.2 handshake: got success, want a refusal")
	}
}

// TestJoinedRoundTrips runs request/response traffic through a tunnel
// joined to TCP sockets on both ends, as ztunnel runs it: an app's TCP
// connection joined to a client stream, the server's stream joined to the
// upstream echo server. Message sizes from a few bytes to several frames
// mix the paths a payload can take to the destination socket (written by
// the reading goroutine itself, queued for WriteTo, or both), on many
// streams at once; every echo must come back whole and in order.
func TestJoinedRoundTrips(t *testing.T) {
	f := newFixture(t, nil)
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var joins sync.WaitGroup
	defer joins.Wait()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			s, err := cc.Connect(context.Background(), f.allowed, nil)
			if err != nil {
				c.Close()
				continue
			}
			joins.Go(func() { Join(c, s) })
		}
	}()
	const streams, rounds = 8, 200
	sizes := []int{1, 100, 1500, 16 << 10, 16<<10 + 1, 70 << 10, 300 << 10}
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			c, err := net.Dial("tcp", app.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for r := range rounds {
				n := sizes[(i+r)%len(sizes)]
				msg := bytes.Repeat([]byte{byte(i), byte(r)}, n/2+1)[:n]
				go c.Write(msg)
				got := make([]byte, n)
				if _, err := io.ReadFull(c, got); err != nil {
					t.Errorf("stream %d round %d: read %d-byte echo: %v", i, r, n, err)
					return
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("stream %d round %d: the %d-byte echo differs from what was sent", i, r, n)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestServerEndsAnsweredStream: a server handler that answers in full,
// ends its side and returns before the client ended its own (an HTTP
// server after "Connection: close") ends the stream with END_STREAM and
// RST_STREAM NO_ERROR (RFC 9113 section 8.1), not CANCEL: the client
// reads the whole answer and an EOF, its writes end as on a closed
// connection, and a tunnel joining the stream to a TCP connection (a
// source ztunnel) ends without an error.
func TestServerEndsAnsweredStream(t *testing.T) {
	f := newFixture(t, nil)
	const answer = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
	cert := f.issue(t, f.ca, serverID, time.Hour)
	s := &Server{
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		Verifier:    f.verifier,
		Handler: HandlerFunc(func(_ context.Context, _ *Request, ss *ServerStream) {
			if err := ss.Accept(); err != nil {
				return
			}
			line := make([]byte, len("request\n"))
			if _, err := io.ReadFull(ss, line); err != nil {
				return
			}
			io.WriteString(ss, answer)
			ss.CloseWrite()
			ss.Close()
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	f.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	cc, err := f.dial(t, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("stream", func(t *testing.T) {
		conn, err := cc.Connect(context.Background(), f.allowed, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "request\n"); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != answer {
			t.Fatalf("read answer: got %q, %v; want %q, EOF", got, err, answer)
		}
		// The reset follows the END_STREAM: writes succeed until it
		// has arrived, then fail as on a closed connection.
		for {
			_, err = conn.Write([]byte("more"))
			if err != nil {
				break
			}
		}
		var re *ResetError
		if !errors.Is(err, net.ErrClosed) || !errors.As(err, &re) || re.Code != 0 {
			t.Errorf("write after the server's end: got %v, want net.ErrClosed with RST_STREAM NO_ERROR", err)
		}
	})

	t.Run("joined", func(t *testing.T) {
		conn, err := cc.Connect(context.Background(), f.allowed, nil)
		if err != nil {
			t.Fatal(err)
		}
		app, tun := tcpPair(t)
		joined := make(chan error, 1)
		go func() {
			_, err := Join(tun, conn)
			joined <- err
		}()
		if _, err := io.WriteString(app, "request\n"); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(app)
		if err != nil || string(got) != answer {
			t.Fatalf("read answer: got %q, %v; want %q, EOF", got, err, answer)
		}
		app.Close()
		if err := <-joined; err != nil {
			t.Errorf("Join: got %v, want nil (an orderly end, not a reset)", err)
		}
	})
}

// tcpPair is the two ends of a TCP connection on loopback.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}
