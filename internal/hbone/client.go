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
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"

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
	// Match, if set, replaces the check against Expected: the peer's
	// verified identity is accepted when Match returns nil (a proxy that
	// checks a SAN prefix, as an Envoy cluster's SAN matchers do).
	Match func(identity.Identity) error
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
	c    *conn
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
	if cfg.Expected.IsZero() && cfg.Match == nil {
		return nil, fmt.Errorf("dial hbone %s: no expected peer identity", addr)
	}
	var d interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	} = &net.Dialer{}
	if cfg.Dialer != nil {
		d = cfg.Dialer
	}
	raw, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("dial hbone %s: %w", addr, err)
	}
	var peer identity.Identity
	tc := tls.Client(direct(raw), clientTLSConfig(cfg, &peer))
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("dial hbone %s: tls handshake: %w", addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		tc.Close()
		return nil, fmt.Errorf("dial hbone %s: tls handshake: peer negotiated %q, want %q", addr, p, ALPN)
	}
	c := newConn(tc, false)
	if err := c.start(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("dial hbone %s: %w", addr, err)
	}
	go c.readLoop()
	go c.keepalive(keepaliveInterval, keepaliveTimeout)
	// A stream's frames are sized by the peer's settings: start none
	// before they apply.
	select {
	case <-c.settings:
	case <-c.closed:
		return nil, fmt.Errorf("dial hbone %s: %w", addr, c.Err())
	case <-hctx.Done():
		c.Close()
		return nil, fmt.Errorf("dial hbone %s: wait for the peer's settings: %w", addr, hctx.Err())
	}
	return &ClientConn{addr: addr, peer: peer, cert: cfg.Certificate, c: c}, nil
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
			if cfg.Match != nil {
				if err := cfg.Match(id); err != nil {
					return fmt.Errorf("verify peer: %w: %s: %v", identity.ErrWrongIdentity, id, err)
				}
			} else if id != cfg.Expected {
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
func (c *ClientConn) Close() error { return c.c.Close() }

// Err is non-nil once the connection can no longer be used.
func (c *ClientConn) Err() error { return c.c.Err() }

// Available is how many more streams the connection takes now, as the
// peer's SETTINGS_MAX_CONCURRENT_STREAMS allows; none once the peer
// said GOAWAY.
func (c *ClientConn) Available() int {
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	if c.c.err != nil || c.c.goAwayRecv {
		return 0
	}
	return max(0, int(c.c.peer.maxStreams)-c.c.active)
}

// InFlight is the number of open streams.
func (c *ClientConn) InFlight() int {
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	return c.c.active
}

// SetStateHook registers f to run when streams close or the connection
// closes. f runs without the connection's locks held.
func (c *ClientConn) SetStateHook(f func()) {
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	c.c.hook = f
}

// Connect opens a CONNECT stream to target through the peer. ctx bounds
// only the setup; the returned connection lives until closed. header adds
// request headers (e.g. Forwarded). A refusal by the peer is a
// *StatusError.
func (c *ClientConn) Connect(ctx context.Context, target netip.AddrPort, header http.Header) (net.Conn, error) {
	st, err := c.request(ctx, http.MethodConnect, target.String(), header)
	if err != nil {
		return nil, fmt.Errorf("hbone connect %s via %s: %w", target, c.addr, err)
	}
	st.remote = net.TCPAddrFromAddrPort(target)
	return st, nil
}

// request opens a stream with a request of method to authority and waits
// for the response: a stream answered 200, an error otherwise.
func (c *ClientConn) request(ctx context.Context, method, authority string, header http.Header) (*stream, error) {
	fields := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":authority", Value: authority}}
	if method != http.MethodConnect {
		fields = append(fields, hpack.HeaderField{Name: ":scheme", Value: "https"}, hpack.HeaderField{Name: ":path", Value: "/"})
	}
	for k, vs := range header {
		name := strings.ToLower(k)
		for _, v := range vs {
			f := hpack.HeaderField{Name: name, Value: v}
			if f.IsPseudo() || !validField(f) {
				return nil, fmt.Errorf("invalid request header %q", k)
			}
			fields = append(fields, f)
		}
	}
	hc := c.c
	// Stream ids must reach the peer in increasing order: the id is
	// taken and its HEADERS written under the write lock.
	hc.wmu.Lock()
	hc.mu.Lock()
	switch {
	case hc.err != nil:
		err := hc.err
		hc.mu.Unlock()
		hc.wmu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrConnClosed, err)
	case hc.goAwayRecv:
		hc.mu.Unlock()
		hc.wmu.Unlock()
		return nil, fmt.Errorf("%w: the peer sent GOAWAY", ErrRefusedStream)
	case hc.active >= int(hc.peer.maxStreams):
		hc.mu.Unlock()
		hc.wmu.Unlock()
		return nil, fmt.Errorf("%w: %d streams open, the peer allows %d", ErrRefusedStream, hc.active, hc.peer.maxStreams)
	case hc.nextID > maxWindow:
		hc.mu.Unlock()
		hc.wmu.Unlock()
		return nil, fmt.Errorf("%w: stream ids exhausted", ErrRefusedStream)
	}
	id := hc.nextID
	hc.nextID += 2
	st := hc.newStreamLocked(id)
	hc.mu.Unlock()
	err := hc.writeHeadersLocked(id, fields, false)
	hc.wmu.Unlock()
	st.local = hc.nc.LocalAddr()
	if err != nil {
		hc.fail(err)
		st.abort(err)
		return nil, err
	}
	select {
	case r := <-st.resp:
		if r.err != nil {
			st.Close()
			return nil, r.err
		}
		if r.status != http.StatusOK {
			se := &StatusError{Code: r.status}
			if why := refusalReason(ctx, st); why != "" {
				se.Err = errors.New(why)
			}
			st.Close()
			return nil, se
		}
		return st, nil
	case <-ctx.Done():
		st.reset(codeCancel, ctx.Err())
		return nil, ctx.Err()
	}
}

// Bounds on reading the reason a peer gives with a refusal.
const (
	maxReason  = 256
	reasonWait = time.Second
)

// refusalReason reads the text a peer sent with a refusal (an Ambit
// peer sends why), at most maxReason bytes, printable ASCII only, waiting
// no longer than reasonWait or ctx. It returns "" when there is none.
func refusalReason(ctx context.Context, st *stream) string {
	buf := make([]byte, maxReason)
	got := make(chan int, 1)
	go func() {
		n, _ := io.ReadFull(st, buf)
		got <- n
	}()
	t := time.NewTimer(reasonWait)
	defer t.Stop()
	var n int
	select {
	case n = <-got:
	case <-t.C:
		st.Close() // ends the read
		n = <-got
	case <-ctx.Done():
		st.Close()
		n = <-got
	}
	why := []byte(strings.TrimSpace(string(buf[:n])))
	for i, b := range why {
		if b < 0x20 || b > 0x7e {
			why[i] = '?'
		}
	}
	return string(why)
}
