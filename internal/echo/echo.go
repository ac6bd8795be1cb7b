// Package echo is the test workload: a TCP and HTTP server that answers
// every request with a report of what it saw (peer and local address,
// headers, TLS peer identity), and the client that asks it. It can also
// serve gRPC: grpc-go's interop TestService, answering with its hostname.
//
// Tests and the demo run it inside lab pods to show where traffic came from
// and how it arrived.
package echo

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/ambitmesh/ambit/internal/logkey"
)

// Report is what the server saw of one request.
type Report struct {
	// Hostname is the server's name: the pod name in the lab.
	Hostname string `json:"hostname"`
	// Namespace is the server's Kubernetes namespace, if known.
	Namespace string `json:"namespace,omitempty"`
	// Protocol is "tcp" or "http".
	Protocol string `json:"protocol"`
	// Peer is the client address as the server's socket saw it.
	Peer string `json:"peer"`
	// Local is the server's address of the connection.
	Local string `json:"local"`
	// Message is the line a TCP client sent.
	Message string `json:"message,omitempty"`
	// Method, Host, Path and Headers describe an HTTP request.
	Method  string              `json:"method,omitempty"`
	Host    string              `json:"host,omitempty"`
	Path    string              `json:"path,omitempty"`
	Headers map[string][]string `json:"headers,omitempty"`
	// PeerIdentities are the URI SANs of a TLS client certificate.
	PeerIdentities []string `json:"peerIdentities,omitempty"`
}

// Server answers TCP and HTTP requests with Reports, and gRPC calls of
// the interop TestService (see grpc.go).
type Server struct {
	// TCPAddrs, HTTPAddrs and GRPCAddrs are listen addresses such as
	// ":9000".
	TCPAddrs  []string
	HTTPAddrs []string
	GRPCAddrs []string
	// Hostname and Namespace go into every Report.
	Hostname  string
	Namespace string
	Log       *slog.Logger

	mu     sync.Mutex
	counts map[string]int // requests by path
}

// Identity returns the hostname and namespace of the running process:
// $POD_NAME or $HOSTNAME or the host name, and $POD_NAMESPACE.
func Identity() (hostname, namespace string) {
	hostname = os.Getenv("POD_NAME")
	if hostname == "" {
		hostname = os.Getenv("HOSTNAME")
	}
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	return hostname, os.Getenv("POD_NAMESPACE")
}

// ListenAndServe listens on every address and serves until ctx ends. It
// returns the first listen error, or nil after ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var ls []net.Listener
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	var tcp, web []net.Listener
	for _, a := range s.TCPAddrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen tcp %s: %w", a, err)
		}
		ls = append(ls, l)
		tcp = append(tcp, l)
	}
	for _, a := range s.HTTPAddrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen http %s: %w", a, err)
		}
		ls = append(ls, l)
		web = append(web, l)
	}
	var rpc []net.Listener
	for _, a := range s.GRPCAddrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen grpc %s: %w", a, err)
		}
		ls = append(ls, l)
		rpc = append(rpc, l)
	}
	return s.Serve(ctx, tcp, web, rpc...)
}

// Serve serves on listeners that are already open until ctx ends, then
// closes them: TCP reports on tcp, HTTP on web, and the gRPC TestService
// (cleartext HTTP/2) on rpc.
func (s *Server) Serve(ctx context.Context, tcp, web []net.Listener, rpc ...net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	var servers []*http.Server
	for _, l := range tcp {
		log.Info("serving tcp", logkey.Addr, l.Addr().String())
		wg.Go(func() { s.serveTCP(ctx, l, log) })
	}
	for _, l := range web {
		log.Info("serving http", logkey.Addr, l.Addr().String())
		hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		wg.Go(func() {
			if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("serve http", logkey.Addr, l.Addr().String(), logkey.Error, err)
			}
		})
	}
	var gs *grpc.Server
	if len(rpc) > 0 {
		gs = grpc.NewServer()
		testgrpc.RegisterTestServiceServer(gs, grpcService{s: s})
	}
	for _, l := range rpc {
		log.Info("serving grpc", logkey.Addr, l.Addr().String())
		wg.Go(func() {
			if err := gs.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				log.Error("serve grpc", logkey.Addr, l.Addr().String(), logkey.Error, err)
			}
		})
	}
	<-ctx.Done()
	if gs != nil {
		gs.Stop()
	}
	for _, l := range tcp {
		l.Close()
	}
	for _, hs := range servers {
		hs.Close()
	}
	wg.Wait()
	return nil
}

func (s *Server) serveTCP(ctx context.Context, l net.Listener, log *slog.Logger) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				log.Error("accept tcp", logkey.Addr, l.Addr().String(), logkey.Error, err)
			}
			return
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		conns.Go(func() {
			defer stop()
			defer c.Close()
			s.handleTCP(c)
		})
	}
}

// handleTCP answers each line the client sends with a Report as one JSON
// line, until the client closes.
func (s *Server) handleTCP(c net.Conn) {
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	for {
		line, err := r.ReadString('\n')
		if line == "" && err != nil {
			return
		}
		rep := s.report("tcp", c.RemoteAddr(), c.LocalAddr())
		rep.Message = strings.TrimRight(line, "\r\n")
		if err := enc.Encode(rep); err != nil {
			return
		}
	}
}

func (s *Server) report(proto string, peer, local net.Addr) Report {
	return Report{Hostname: s.Hostname, Namespace: s.Namespace, Protocol: proto, Peer: peer.String(), Local: local.String()}
}

// ServeHTTP answers /healthz with "ok", /requests with how many
// requests each path got (JSON, health checks and itself not counted),
// and every other path with a Report. The query parameters `delay` (a
// duration) and `status` (a code) make it wait before answering and
// answer with that status, for tests of timeouts and retries.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		io.WriteString(w, "ok\n")
		return
	case "/requests":
		s.mu.Lock()
		b, _ := json.Marshal(s.counts)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		return
	}
	s.mu.Lock()
	if s.counts == nil {
		s.counts = map[string]int{}
	}
	s.counts[r.URL.Path]++
	s.mu.Unlock()
	q := r.URL.Query()
	if d, err := time.ParseDuration(q.Get("delay")); err == nil && d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	status := http.StatusOK
	if c, err := strconv.Atoi(q.Get("status")); err == nil && c >= 200 && c <= 599 {
		status = c
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	rep := Report{
		Hostname: s.Hostname, Namespace: s.Namespace, Protocol: "http",
		Peer: r.RemoteAddr, Method: r.Method, Host: r.Host, Path: r.URL.Path,
		Headers: r.Header,
	}
	if local != nil {
		rep.Local = local.String()
	}
	if r.TLS != nil {
		rep.PeerIdentities = peerIdentities(r.TLS)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(rep)
}

func peerIdentities(cs *tls.ConnectionState) []string {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	var ids []string
	for _, u := range cs.PeerCertificates[0].URIs {
		ids = append(ids, u.String())
	}
	sort.Strings(ids)
	return ids
}

// TCP connects to addr, sends message as one line and returns the server's
// Report.
func TCP(ctx context.Context, addr, message string) (Report, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Report{}, fmt.Errorf("dial tcp %s: %w", addr, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	return RoundTrip(c, message)
}

// RoundTrip sends message as one line on c, an open connection to a
// server's TCP port, and returns the server's Report of it; c stays open
// for more. The caller sets c's deadline.
func RoundTrip(c net.Conn, message string) (Report, error) {
	if strings.ContainsAny(message, "\r\n") {
		return Report{}, fmt.Errorf("tcp message %q: want a single line", message)
	}
	if _, err := io.WriteString(c, message+"\n"); err != nil {
		return Report{}, fmt.Errorf("send to %s: %w", c.RemoteAddr(), err)
	}
	// One line: the server answers each line with one.
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return Report{}, fmt.Errorf("read report from %s: %w", c.RemoteAddr(), err)
	}
	var rep Report
	if err := json.Unmarshal(line, &rep); err != nil {
		return Report{}, fmt.Errorf("read report from %s: %w", c.RemoteAddr(), err)
	}
	return rep, nil
}

// Fetch sends a GET to url and copies the body of a 200 answer to w.
func Fetch(ctx context.Context, client *http.Client, url string, header http.Header, w io.Writer) error {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", url, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %d", url, resp.StatusCode)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("read %s: %w", url, err)
	}
	return nil
}

// HTTP sends a GET to url and returns the server's Report.
func HTTP(ctx context.Context, client *http.Client, url string, header http.Header) (Report, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Report{}, fmt.Errorf("request %s: %w", url, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return Report{}, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Report{}, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Report{}, fmt.Errorf("get %s: status %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var rep Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return Report{}, fmt.Errorf("decode report from %s: %w", url, err)
	}
	return rep, nil
}
