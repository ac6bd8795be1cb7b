package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
)

// Request is one CONNECT a server received, as its hooks see it.
type Request struct {
	// Peer is the client's verified identity.
	Peer identity.Identity
	// PeerAddr is the client's address on the TLS connection.
	PeerAddr netip.AddrPort
	// LocalAddr is the server address the TLS connection arrived at.
	LocalAddr netip.AddrPort
	// Target is the CONNECT :authority, the address to reach.
	Target netip.AddrPort
	// Header holds the request headers.
	Header http.Header
}

// Server accepts HBONE tunnels. Certificate, Verifier, Authorize and Dial
// are required; a Server missing Authorize refuses every CONNECT.
type Server struct {
	// Certificate picks the server's certificate for a handshake, usually
	// by the local address the client reached.
	Certificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Verifier checks client chains against the mesh roots.
	Verifier *identity.Verifier
	// Authorize approves a CONNECT or refuses it. Errors wrapping
	// ErrBadRequest answer 400, other errors 401. The server never dials a
	// target that Authorize did not approve.
	Authorize func(ctx context.Context, r *Request) error
	// Dial connects to an approved target; an error answers 503.
	Dial func(ctx context.Context, r *Request) (net.Conn, error)
	// Handle runs the tunnel once the upstream is connected and 200 sent:
	// it owns both connections and must close them. Nil means Join.
	Handle func(ctx context.Context, r *Request, client, upstream net.Conn)
	// Log receives handshake failures and refusals; nil discards them.
	Log *slog.Logger

	mu  sync.Mutex
	srv *http.Server
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Log attribute keys of the server.
const (
	logKeyPeer      = "peer"
	logKeyPeerAddr  = "peer_addr"
	logKeyAuthority = "authority"
	logKeyStatus    = "status"
	logKeyError     = "error"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

func (s *Server) server() *http.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		s.srv = &http.Server{
			Handler:           http.HandlerFunc(s.serveHTTP),
			TLSConfig:         s.TLSConfig(),
			Protocols:         new(http.Protocols),
			HTTP2:             http2Config(),
			ReadHeaderTimeout: handshakeTimeout,
			// Close tunnel connections that carry no stream for this long.
			IdleTimeout: idleTimeout,
			ErrorLog:    slog.NewLogLogger(s.log().Handler(), slog.LevelInfo),
		}
		s.srv.Protocols.SetHTTP2(true)
	}
	return s.srv
}

// Serve accepts TCP connections on ln and serves HBONE on them until the
// server is shut down. Handshake failures are logged, with the reason the
// peer was refused.
func (s *Server) Serve(ln net.Listener) error {
	return s.server().ServeTLS(ln, "", "")
}

// TLSConfig is the server side of HBONE's TLS: 1.3 only, ALPN h2, a
// client certificate required and chained to the mesh roots.
func (s *Server) TLSConfig() *tls.Config {
	return tlsVersionOnly13(&tls.Config{
		GetCertificate: s.Certificate,
		ClientAuth:     tls.RequireAnyClientCert,
		// A resumed session would skip VerifyPeerCertificate, and with it
		// the check against the current mesh roots.
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if s.Verifier == nil {
				return errors.New("verify peer: no verifier configured")
			}
			_, err := s.Verifier.Verify(raw)
			return err
		},
	})
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 || r.TLS == nil {
		http.Error(w, "hbone needs HTTP/2 over TLS", http.StatusBadRequest)
		return
	}
	peer, err := identity.FromConnectionState(*r.TLS)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	ci := connInfo{peer: peer}
	ci.peerAddr, _ = netip.ParseAddrPort(r.RemoteAddr)
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ci.localAddr = AddrPort(la)
	}
	ci.peerAddr = netip.AddrPortFrom(ci.peerAddr.Addr().Unmap(), ci.peerAddr.Port())
	s.handle(w, r, ci)
}

type connInfo struct {
	peer      identity.Identity
	peerAddr  netip.AddrPort
	localAddr netip.AddrPort
}

// AddrPort is a connection address as an unmapped netip.AddrPort (the
// zero value for an address that is not IP).
func AddrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// ParseTarget checks a request is a CONNECT to a literal ip:port and
// returns that address.
func ParseTarget(method, authority string) (netip.AddrPort, error) {
	if method != http.MethodConnect {
		return netip.AddrPort{}, fmt.Errorf("%w: method %q, want CONNECT", ErrBadRequest, method)
	}
	ap, err := netip.ParseAddrPort(authority)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: authority %q, want ip:port", ErrBadRequest, authority)
	}
	if ap.Port() == 0 || ap.Addr().Zone() != "" || !ap.Addr().IsValid() {
		return netip.AddrPort{}, fmt.Errorf("%w: authority %q, want ip:port", ErrBadRequest, authority)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// handle is the CONNECT logic, apart from the connection so that fuzzing
// can drive it.
func (s *Server) handle(w http.ResponseWriter, r *http.Request, ci connInfo) {
	target, err := ParseTarget(r.Method, r.Host)
	if err != nil {
		s.refuse(w, ci, r.Host, http.StatusBadRequest, err)
		return
	}
	req := &Request{Peer: ci.peer, PeerAddr: ci.peerAddr, LocalAddr: ci.localAddr, Target: target, Header: r.Header}
	ctx := r.Context()
	if s.Authorize == nil {
		s.refuse(w, ci, r.Host, http.StatusUnauthorized, errors.New("no authorization hook"))
		return
	}
	if err := s.Authorize(ctx, req); err != nil {
		code := http.StatusUnauthorized
		if errors.Is(err, ErrBadRequest) {
			code = http.StatusBadRequest
		}
		s.refuse(w, ci, r.Host, code, err)
		return
	}
	if s.Dial == nil {
		s.refuse(w, ci, r.Host, http.StatusServiceUnavailable, errors.New("no dial hook"))
		return
	}
	up, err := s.Dial(ctx, req)
	if err != nil {
		s.refuse(w, ci, r.Host, http.StatusServiceUnavailable, err)
		return
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		up.Close()
		return
	}
	stream := &serverStream{body: r.Body, w: w, rc: rc, local: net.TCPAddrFromAddrPort(ci.localAddr), remote: net.TCPAddrFromAddrPort(ci.peerAddr)}
	if s.Handle != nil {
		s.Handle(ctx, req, stream, up)
		return
	}
	Join(stream, up)
}

func (s *Server) refuse(w http.ResponseWriter, ci connInfo, authority string, code int, err error) {
	s.log().Info("hbone connect refused", logKeyPeer, ci.peer.String(), logKeyPeerAddr, ci.peerAddr.String(),
		logKeyAuthority, authority, logKeyStatus, code, logKeyError, err.Error())
	http.Error(w, err.Error(), code)
}

// Shutdown stops accepting, waits for open streams to end until ctx is
// done, then closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	srv := s.server()
	err := srv.Shutdown(ctx)
	srv.Close()
	if err != nil {
		return fmt.Errorf("drain hbone streams: %w", err)
	}
	return nil
}

// Close closes listeners and connections at once.
func (s *Server) Close() error { return s.server().Close() }

// serverStream is the server end of a CONNECT stream as a connection.
type serverStream struct {
	closed atomic.Bool
	body   io.ReadCloser
	w      http.ResponseWriter
	rc     *http.ResponseController
	local  net.Addr
	remote net.Addr
}

// Read reads from the request body. After Close it reports net.ErrClosed,
// as a connection does, rather than the HTTP/2 server's "body closed by
// handler", so that ending a stream normally is not counted as an error.
func (s *serverStream) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if err != nil && s.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

func (s *serverStream) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, s.rc.Flush()
}

// Close ends the request body; the response side ends when the handler
// returns.
func (s *serverStream) Close() error {
	s.closed.Store(true)
	return s.body.Close()
}
func (s *serverStream) LocalAddr() net.Addr  { return s.local }
func (s *serverStream) RemoteAddr() net.Addr { return s.remote }

func (s *serverStream) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (s *serverStream) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (s *serverStream) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }
