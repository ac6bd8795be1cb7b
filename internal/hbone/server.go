package hbone

import (
	"cmp"
	"container/list"
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/logkey"
	"github.com/ambitmesh/ambit/internal/tracker"
)

// Request is one CONNECT a server received, as its handler sees it.
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

// Handler serves the CONNECT streams a Server accepted. ServeStream
// answers st exactly once, with st.Accept (200, then st is the tunnel) or
// st.Refuse (an error status); it runs in the stream's own goroutine, and
// ctx ends when the stream does (the client reset it, or the connection
// ended). The server closes st once ServeStream returns, and refuses a
// stream left unanswered with 503.
type Handler interface {
	ServeStream(ctx context.Context, r *Request, st *ServerStream)
}

// HandlerFunc is a function used as a Handler.
type HandlerFunc func(ctx context.Context, r *Request, st *ServerStream)

// ServeStream calls f.
func (f HandlerFunc) ServeStream(ctx context.Context, r *Request, st *ServerStream) { f(ctx, r, st) }

// Server accepts HBONE tunnels. Certificate, Verifier and Handler are
// required; a Server without a Handler refuses every CONNECT.
type Server struct {
	// Certificate picks the server's certificate for a handshake, usually
	// by the local address the client reached.
	Certificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Verifier checks client chains against the mesh roots.
	Verifier *identity.Verifier
	// Handler gets every well-formed CONNECT to an ip:port; the server
	// answers malformed requests 400 itself, without it.
	Handler Handler
	// Log receives handshake failures and refusals; nil discards them.
	Log *slog.Logger
	// MaxHandshakes bounds the connections not yet past the TLS
	// handshake and the HTTP/2 preface, which nobody has authenticated
	// yet (0: DefaultMaxHandshakes); MaxHandshakesPerSource bounds those
	// from one address (0: DefaultMaxHandshakesPerSource). A connection
	// over the bound per source is closed as soon as it is accepted; over
	// the bound in all, the one that has waited longest is closed (see
	// admit). A flood of idle connections neither holds descriptors the
	// process needs elsewhere (readiness, admin, tunnels) nor locks out
	// other clients.
	MaxHandshakes          int
	MaxHandshakesPerSource int

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	shutdown  bool
	conns     tracker.Tracker[*conn]
	// Connections in the handshake, in all and by source address; shed
	// counts those closed for the bounds, shedLogged is when the last
	// warning about it was logged.
	pending    list.List // of *handshake, oldest first
	bySource   map[netip.Addr]int
	shed       uint64
	shedLogged time.Time
}

// Default bounds of connections in the handshake.
const (
	DefaultMaxHandshakes          = 512
	DefaultMaxHandshakesPerSource = 64
)

// handshake is a connection admitted to the handshake.
type handshake struct {
	raw net.Conn
	src netip.Addr
	// el is its place in Server.pending; nil once it left (done, or
	// evicted).
	el *list.Element
}

// admit admits a connection from src to the handshake. Over the bound per
// source it is refused (nil). Over the bound in all, the connection that
// has waited longest is closed to make room: a handshake takes
// milliseconds, so what waits longest is what never meant to finish one,
// and a flood from many addresses does not lock out the next honest
// client.
func (s *Server) admit(raw net.Conn, src netip.Addr) *handshake {
	limit, perSource := cmp.Or(s.MaxHandshakes, DefaultMaxHandshakes), cmp.Or(s.MaxHandshakesPerSource, DefaultMaxHandshakesPerSource)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bySource[src] >= perSource {
		s.shedLocked(src)
		return nil
	}
	if s.pending.Len() >= limit {
		old := s.pending.Front().Value.(*handshake)
		s.leaveLocked(old)
		old.raw.Close()
		s.shedLocked(old.src)
	}
	if s.bySource == nil {
		s.bySource = map[netip.Addr]int{}
	}
	h := &handshake{raw: raw, src: src}
	h.el = s.pending.PushBack(h)
	s.bySource[src]++
	return h
}

// shedLocked counts a connection closed for the bounds, and warns at
// most every ten seconds. The caller holds mu.
func (s *Server) shedLocked(src netip.Addr) {
	s.shed++
	if now := time.Now(); now.Sub(s.shedLogged) >= 10*time.Second {
		s.shedLogged = now
		s.log().Warn("hbone connections closed unauthenticated: too many in the handshake", logkey.PeerAddr, src.String(),
			logkey.Count, s.shed, logkey.InHandshake, s.pending.Len(), logkey.FromPeer, s.bySource[src])
	}
}

// leaveLocked takes h out of the handshake bounds. The caller holds mu.
func (s *Server) leaveLocked(h *handshake) {
	if h.el == nil {
		return
	}
	s.pending.Remove(h.el)
	h.el = nil
	if s.bySource[h.src]--; s.bySource[h.src] <= 0 {
		delete(s.bySource, h.src)
	}
}

// release takes h out of the handshake bounds once its handshake ended,
// either way.
func (s *Server) release(h *handshake) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leaveLocked(h)
}

// Shed is how many connections were closed for being over the handshake
// bounds.
func (s *Server) Shed() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shed
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone server closed")

// Serve accepts TCP connections on ln and serves HBONE on them until the
// server is shut down. Handshake failures are logged, with the reason the
// peer was refused.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors or a transient failure: back off
				// rather than spin.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log().Warn("hbone accept failed", logkey.Error, err.Error())
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept hbone: %w", err)
		}
		delay = 0
		h := s.admit(raw, AddrPort(raw.RemoteAddr()).Addr())
		if h == nil {
			raw.Close()
			continue
		}
		go s.serveConn(raw, h)
	}
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

// serveConn runs one tunnel connection: TLS, the HTTP/2 preface and
// settings, then frames until it ends.
func (s *Server) serveConn(raw net.Conn, h *handshake) {
	defer s.release(h)
	ci := connInfo{peerAddr: AddrPort(raw.RemoteAddr()), localAddr: AddrPort(raw.LocalAddr())}
	tc := tls.Server(direct(raw), s.TLSConfig())
	refuse := func(msg string, err error) {
		s.log().Info(msg, logkey.PeerAddr, ci.peerAddr.String(), logkey.Error, err.Error())
		tc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		refuse("hbone handshake failed", err)
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPN {
		refuse("hbone handshake failed", fmt.Errorf("client negotiated ALPN %q, want %q", cs.NegotiatedProtocol, ALPN))
		return
	}
	peer, err := identity.FromConnectionState(cs)
	if err != nil {
		refuse("hbone handshake failed", err)
		return
	}
	ci.peer = peer
	tc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	var pre [len(preface)]byte
	if _, err := io.ReadFull(tc, pre[:]); err != nil || string(pre[:]) != preface {
		if err == nil {
			err = fmt.Errorf("got %q, want the HTTP/2 connection preface", pre[:])
		}
		refuse("hbone preface refused", err)
		return
	}
	tc.SetReadDeadline(time.Time{})
	s.release(h)
	c := newConn(tc, true)
	c.onRequest = func(st *stream, fields []hpack.HeaderField) {
		st.local = net.TCPAddrFromAddrPort(ci.localAddr)
		st.remote = net.TCPAddrFromAddrPort(ci.peerAddr)
		go s.serveStream(st, fields, ci)
	}
	if !s.conns.Add(c) {
		tc.Close()
		return
	}
	defer s.conns.Remove(c)
	if err := c.start(); err != nil {
		c.fail(err)
		return
	}
	c.idleAfter(idleTimeout)
	c.readLoop()
	if err := c.Err(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		s.log().Info("hbone connection failed", logkey.Peer, peer.String(), logkey.PeerAddr, ci.peerAddr.String(), logkey.Error, err.Error())
	}
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

// requestHead is what a request's header block says.
type requestHead struct {
	method, authority string
	header            http.Header
}

// parseRequest reads a request's header block. A CONNECT carries
// :method and :authority only (RFC 9113 section 8.5); other methods
// come with :scheme and :path, and are refused later.
func parseRequest(fields []hpack.HeaderField) (requestHead, error) {
	r := requestHead{header: http.Header{}}
	regular := false
	var scheme, path, protocol bool
	for _, f := range fields {
		if !validField(f) {
			return r, fmt.Errorf("%w: invalid header field %q", ErrBadRequest, f.Name)
		}
		if !f.IsPseudo() {
			// Connection-specific fields make a request malformed
			// (RFC 9113 section 8.2.2).
			switch f.Name {
			case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
				return r, fmt.Errorf("%w: connection-specific header field %q", ErrBadRequest, f.Name)
			case "te":
				if f.Value != "trailers" {
					return r, fmt.Errorf("%w: te %q, only \"trailers\" is allowed", ErrBadRequest, f.Value)
				}
			}
			regular = true
			r.header.Add(f.Name, f.Value)
			continue
		}
		if regular {
			return r, fmt.Errorf("%w: pseudo-header %s after regular headers", ErrBadRequest, f.Name)
		}
		var dup bool
		switch f.Name {
		case ":method":
			dup, r.method = r.method != "", f.Value
		case ":authority":
			dup, r.authority = r.authority != "", f.Value
		case ":scheme":
			dup, scheme = scheme, true
		case ":path":
			dup, path = path, true
		case ":protocol":
			dup, protocol = protocol, true
		default:
			return r, fmt.Errorf("%w: unknown pseudo-header %s", ErrBadRequest, f.Name)
		}
		if dup {
			return r, fmt.Errorf("%w: pseudo-header %s twice", ErrBadRequest, f.Name)
		}
	}
	if r.method == "" {
		return r, fmt.Errorf("%w: no :method", ErrBadRequest)
	}
	if r.method == http.MethodConnect && (scheme || path || protocol) {
		return r, fmt.Errorf("%w: CONNECT with :scheme, :path or :protocol (extended CONNECT is not HBONE)", ErrBadRequest)
	}
	return r, nil
}

// serveStream answers one request, through the handler when it is a
// well-formed CONNECT.
func (s *Server) serveStream(st *stream, fields []hpack.HeaderField, ci connInfo) {
	defer st.releaseSlot()
	defer st.cancel()
	ss := &ServerStream{stream: st, srv: s, ci: ci}
	s.dispatch(st.ctx, ss, fields)
	ss.end()
}

// dispatch is the CONNECT logic apart from the connection, so that
// fuzzing can drive it: a malformed request is refused 400, a CONNECT
// goes to the handler.
func (s *Server) dispatch(ctx context.Context, ss *ServerStream, fields []hpack.HeaderField) {
	head, err := parseRequest(fields)
	ss.authority = head.authority
	if err != nil {
		ss.Refuse(http.StatusBadRequest, err)
		return
	}
	target, err := ParseTarget(head.method, head.authority)
	if err != nil {
		ss.Refuse(http.StatusBadRequest, err)
		return
	}
	if s.Handler == nil {
		ss.Refuse(http.StatusUnauthorized, errors.New("no handler"))
		return
	}
	r := &Request{Peer: ss.ci.peer, PeerAddr: ss.ci.peerAddr, LocalAddr: ss.ci.localAddr, Target: target, Header: head.header}
	s.Handler.ServeStream(ctx, r, ss)
}

// ServerStream is a CONNECT stream a server accepted, as its Handler
// gets it. It is answered once, with Accept or Refuse; after Accept it
// is the tunnel to the client, a net.Conn that CloseWrite half-closes.
type ServerStream struct {
	// stream is nil for a request FuzzCONNECT drives without a
	// connection: the answer is only recorded.
	*stream
	srv       *Server
	ci        connInfo
	authority string
	// status is the answer sent, 0 before.
	status int
}

// errAnswered is returned by Accept on a stream already answered.
var errAnswered = errors.New("hbone stream already answered")

// Accept answers the CONNECT 200: the tunnel is open. An error means
// the stream has ended (the client went away); the handler has nothing
// more to do with it.
func (ss *ServerStream) Accept() error {
	if ss.status != 0 {
		return errAnswered
	}
	ss.status = http.StatusOK
	if ss.stream == nil {
		return nil
	}
	if err := ss.stream.sendEnded(); err != nil {
		return err
	}
	return ss.c.writeHeaders(ss.id, []hpack.HeaderField{{Name: ":status", Value: "200"}}, false)
}

// Refuse answers the CONNECT with an error status and the status's short
// reason as a text body, then ends the stream. err, the detail, goes to
// the server's log only: the peer is never told which addresses are
// workloads here, the dial error, the policy's name, or the authority it
// sent. After Accept, Refuse only closes the stream.
func (ss *ServerStream) Refuse(code int, err error) {
	if ss.status != 0 {
		if ss.stream != nil {
			ss.stream.Close()
		}
		return
	}
	ss.status = code
	ss.srv.log().Info("hbone connect refused", logkey.Peer, ss.ci.peer.String(), logkey.PeerAddr, ss.ci.peerAddr.String(),
		logkey.Authority, ss.authority, logkey.Status, code, logkey.Error, err.Error())
	if ss.stream == nil {
		return
	}
	st := ss.stream
	c := st.c
	if st.sendEnded() != nil {
		// Reset already (by the peer, or by this server for the peer's
		// error): no HEADERS on a closed stream.
		st.Close()
		return
	}
	if c.writeHeaders(st.id, []hpack.HeaderField{
		{Name: ":status", Value: strconv.Itoa(code)},
		{Name: "content-type", Value: "text/plain; charset=utf-8"},
	}, false) != nil {
		st.Close()
		return
	}
	st.Write([]byte(refusalText(code) + "\n"))
	st.CloseWrite()
	// The client need not send the rest of its request (RFC 9113
	// section 8.1): NO_ERROR.
	st.mu.Lock()
	ended := st.recvEnd
	st.mu.Unlock()
	if !ended {
		st.reset(codeNo, errors.New("request refused"))
	}
	st.Close()
}

// end ends a stream once its handler returned: refused 503 if the
// handler left it unanswered, closed in any case.
func (ss *ServerStream) end() {
	if ss.status == 0 {
		ss.Refuse(http.StatusServiceUnavailable, errors.New("handler returned without answering"))
	}
	if ss.stream != nil {
		ss.stream.Close()
	}
}

// refusalText is what a refused peer is told: the status's short reason,
// never the detail, which goes to the log.
func refusalText(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "bad request"
	case http.StatusUnauthorized:
		return "denied"
	case http.StatusServiceUnavailable:
		return "destination unavailable"
	}
	return strings.ToLower(http.StatusText(code))
}

// Shutdown stops accepting, tells clients to open no more streams
// (GOAWAY), waits for open streams to end until ctx is done, then closes
// every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	if err := s.conns.Shutdown(ctx, (*conn).goAway, func(c *conn) { c.Close() }); err != nil {
		return fmt.Errorf("drain hbone streams: %w", err)
	}
	return nil
}

// Close closes listeners and connections at once.
func (s *Server) Close() error {
	s.closeListeners()
	for _, c := range s.conns.Stop() {
		c.Close()
	}
	return nil
}

// closeListeners marks the server shut down and closes its listeners.
func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
}
