package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
)

// ClientConfig says who a client is and whom it expects to reach.
type ClientConfig struct {
	// Certificate is the source workload's certificate.
	Certificate *tls.Certificate
	// Verifier checks the peer's chain against the mesh roots.
	Verifier *identity.Verifier
	// Expected is the identity the peer must prove.
	Expected identity.Identity
	// Dialer makes the TCP connection; nil means a net.Dialer.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
}

// ClientConn is one TLS connection to a peer's tunnel port carrying
// HTTP/2 CONNECT streams. It is safe for concurrent use.
type ClientConn struct {
	addr netip.AddrPort
	peer identity.Identity
	cert *tls.Certificate
	cc   *http.ClientConn
	tls  *tls.Conn
}

// Dial opens a tunnel connection to addr (a peer's ip:15008), presenting
// cfg.Certificate and requiring the peer to prove cfg.Expected. It
// returns once the peer's HTTP/2 settings apply, so that the first stream
// uses the peer's frame size and windows.
func Dial(ctx context.Context, addr netip.AddrPort, cfg ClientConfig) (*ClientConn, error) {
	if cfg.Certificate == nil {
		return nil, fmt.Errorf("dial hbone %s: no client certificate", addr)
	}
	if cfg.Verifier == nil {
		return nil, fmt.Errorf("dial hbone %s: no verifier", addr)
	}
	if cfg.Expected.IsZero() {
		return nil, fmt.Errorf("dial hbone %s: no expected peer identity", addr)
	}
	var tconn *tls.Conn
	var sc *settingsConn
	var peer identity.Identity
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var d interface {
				DialContext(ctx context.Context, network, addr string) (net.Conn, error)
			} = &net.Dialer{}
			if cfg.Dialer != nil {
				d = cfg.Dialer
			}
			raw, err := d.DialContext(ctx, "tcp", a)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, clientTLSConfig(cfg, &peer))
			hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			if err := tc.HandshakeContext(hctx); err != nil {
				raw.Close()
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
				tc.Close()
				return nil, fmt.Errorf("tls handshake: peer negotiated %q, want %q", p, ALPN)
			}
			tconn = tc
			sc = &settingsConn{Conn: tc, applied: make(chan struct{})}
			return sc, nil
		},
		HTTP2:     http2Config(),
		Protocols: new(http.Protocols),
	}
	// HTTP/2 with prior knowledge over the connection above: TLS and ALPN
	// h2 are done and checked by then, and the wire is HBONE's all the
	// same. It lets settingsConn, not a *tls.Conn, be the connection.
	tr.Protocols.SetUnencryptedHTTP2(true)
	cc, err := tr.NewClientConn(ctx, "https", addr.String())
	if err != nil {
		return nil, fmt.Errorf("dial hbone %s: %w", addr, err)
	}
	// The first stream's request body is framed with the frame size known
	// when the stream starts, for its whole life: start none before the
	// peer's SETTINGS (frame size, windows) apply.
	wctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	select {
	case <-sc.applied:
	case <-wctx.Done():
		cc.Close()
		return nil, fmt.Errorf("dial hbone %s: wait for the peer's settings: %w", addr, wctx.Err())
	}
	if err := cc.Err(); err != nil {
		cc.Close()
		return nil, fmt.Errorf("dial hbone %s: %w", addr, err)
	}
	return &ClientConn{addr: addr, peer: peer, cert: cfg.Certificate, cc: cc, tls: tconn}, nil
}

// settingsConn is a client's TLS connection as its HTTP/2 layer reads
// it. A peer's first frame is its SETTINGS; the layer reads frames one at
// a time and applies each before it reads on, so once it has read that
// frame whole and asks for more, the settings apply. settingsConn closes
// applied then (or when reading fails).
type settingsConn struct {
	*tls.Conn
	applied chan struct{}
	once    sync.Once
	// Read runs on the HTTP/2 layer's one reading goroutine: the fields
	// below are its own.
	header  [9]byte // the first frame's header, as read so far
	nheader int
	left    int  // payload of the first frame not yet read
	read    bool // the first frame has been read whole
}

func (c *settingsConn) Read(p []byte) (int, error) {
	if c.read {
		c.once.Do(func() { close(c.applied) })
		return c.Conn.Read(p)
	}
	n, err := c.Conn.Read(p)
	c.observe(p[:n])
	if err != nil {
		c.once.Do(func() { close(c.applied) })
	}
	return n, err
}

// observe follows the first frame through the bytes read.
func (c *settingsConn) observe(b []byte) {
	if c.nheader < len(c.header) {
		k := copy(c.header[c.nheader:], b)
		c.nheader += k
		b = b[k:]
		if c.nheader < len(c.header) {
			return
		}
		c.left = int(c.header[0])<<16 | int(c.header[1])<<8 | int(c.header[2])
	}
	c.left -= min(c.left, len(b))
	c.read = c.left == 0
}

func clientTLSConfig(cfg ClientConfig, peer *identity.Identity) *tls.Config {
	c := &tls.Config{
		Certificates: []tls.Certificate{*cfg.Certificate},
		// The peer is verified against the mesh roots and its SPIFFE
		// identity below; there is no host name to check and no SNI.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := cfg.Verifier.VerifyCertificates(cs.PeerCertificates)
			if err != nil {
				return err
			}
			if id != cfg.Expected {
				return fmt.Errorf("verify peer: %w: got %s, want %s", identity.ErrWrongIdentity, id, cfg.Expected)
			}
			*peer = id
			return nil
		},
	}
	return tlsVersionOnly13(c)
}

// Addr is the peer's tunnel address.
func (c *ClientConn) Addr() netip.AddrPort { return c.addr }

// Peer is the peer's verified identity.
func (c *ClientConn) Peer() identity.Identity { return c.peer }

// Certificate is the certificate this side presented. It stays the
// connection's for its whole life, also after the workload's certificate
// is rotated.
func (c *ClientConn) Certificate() *tls.Certificate { return c.cert }

// Close closes the connection and every stream on it.
func (c *ClientConn) Close() error { return c.cc.Close() }

// Err is non-nil once the connection can no longer be used.
func (c *ClientConn) Err() error { return c.cc.Err() }

// Available is how many more streams the connection takes now, as the
// peer's SETTINGS_MAX_CONCURRENT_STREAMS allows.
func (c *ClientConn) Available() int { return c.cc.Available() }

// InFlight is the number of open streams.
func (c *ClientConn) InFlight() int { return c.cc.InFlight() }

// SetStateHook registers f to run when streams open or close or the
// connection closes.
func (c *ClientConn) SetStateHook(f func()) {
	c.cc.SetStateHook(func(*http.ClientConn) { f() })
}

// Connect opens a CONNECT stream to target through the peer. ctx bounds
// only the setup; the returned connection lives until closed. header adds
// request headers (e.g. Forwarded). A refusal by the peer is a
// *StatusError.
func (c *ClientConn) Connect(ctx context.Context, target netip.AddrPort, header http.Header) (net.Conn, error) {
	pr, pw := io.Pipe()
	sctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancel)
	req := (&http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Scheme: "https", Host: target.String()},
		Host:   target.String(),
		Header: http.Header{},
		Body:   pr,
		// A CONNECT body has no length: the stream is the tunnel.
		ContentLength: -1,
	}).WithContext(sctx)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.cc.RoundTrip(req)
	if !stop() && err == nil {
		err = ctx.Err()
		resp.Body.Close()
	}
	if err != nil {
		cancel()
		pw.Close()
		return nil, fmt.Errorf("hbone connect %s via %s: %w", target, c.addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		pw.Close()
		resp.Body.Close()
		return nil, fmt.Errorf("hbone connect %s via %s: %w", target, c.addr, &StatusError{Code: resp.StatusCode})
	}
	return &clientStream{
		w:      pw,
		body:   resp.Body,
		cancel: cancel,
		local:  c.tls.LocalAddr(),
		remote: net.TCPAddrFromAddrPort(target),
	}, nil
}

// clientStream is one CONNECT stream seen as a connection.
type clientStream struct {
	w      *io.PipeWriter
	body   io.ReadCloser
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr
	once   sync.Once
}

func (s *clientStream) Read(p []byte) (int, error) { return s.body.Read(p) }

func (s *clientStream) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if errors.Is(err, io.ErrClosedPipe) {
		err = net.ErrClosed
	}
	return n, err
}

// CloseWrite ends the stream's sending side (END_STREAM); reading goes on.
func (s *clientStream) CloseWrite() error { return s.w.Close() }

func (s *clientStream) Close() error {
	s.once.Do(func() {
		s.w.Close()
		s.body.Close()
		s.cancel()
	})
	return nil
}

func (s *clientStream) LocalAddr() net.Addr  { return s.local }
func (s *clientStream) RemoteAddr() net.Addr { return s.remote }

// Deadlines are not supported on streams: close the stream instead.
func (s *clientStream) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (s *clientStream) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (s *clientStream) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }
