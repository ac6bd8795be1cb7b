// Package hbone is HBONE, the mesh's tunnel protocol: HTTP/2 CONNECT over
// mutual TLS 1.3 (ALPN "h2", no SNI), where each side proves a SPIFFE
// workload identity with its certificate. It holds the client, which dials
// a peer's tunnel port and opens one CONNECT stream per proxied
// connection, and the server, which accepts tunnels, proves who the
// client is, and hands each CONNECT to one handler that answers it (and,
// for a proxy, checks it, connects upstream and joins the two).
package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/internal/mesh"
)

// Port is the HBONE tunnel port of every mesh workload.
const Port = mesh.HBONEPort

// ALPN is the only application protocol HBONE speaks over TLS.
const ALPN = "h2"

// Flow-control and framing settings. Large windows let one stream fill a
// fast link. Frames of about 64 KiB cut per-frame overhead for bulk
// tunnelling (see docs/performance.md); a stream holds received frames
// only until its reader takes them.
const (
	streamWindow = 4 << 20
	connWindow   = 16 << 20
	maxFrameSize = 4*tlsRecordPayload - frameHeaderLen
	// bufferSize is the copy buffer of one direction of a tunnel: four
	// whole frames.
	bufferSize = 4 * maxFrameSize
	// handshakeTimeout bounds a TLS handshake on either side.
	handshakeTimeout = 10 * time.Second
	// idleTimeout closes a server connection without streams; clients
	// close theirs sooner (the pool's idle timeout).
	idleTimeout = 5 * time.Minute
)

// Header names HBONE peers send with CONNECT.
const (
	// HeaderForwarded carries the original client address, as in RFC 7239.
	HeaderForwarded = "Forwarded"
	// HeaderBaggage carries the source workload's metadata.
	HeaderBaggage = "Baggage"
)

// StatusError is a CONNECT refused by the peer.
type StatusError struct {
	Code int
	Err  error
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("status %d %s", e.Code, http.StatusText(e.Code))
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *StatusError) Unwrap() error { return e.Err }

// Reasons of refusals: a malformed request (the server answers it 400),
// and a connection a policy denies.
var (
	ErrBadRequest = errors.New("bad request")
	ErrDenied     = errors.New("denied by policy")
)

// StatusCode returns the HTTP status of a CONNECT error: the peer's
// status for a StatusError, 0 otherwise.
func StatusCode(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func tlsVersionOnly13(c *tls.Config) *tls.Config {
	c.MinVersion = tls.VersionTLS13
	c.MaxVersion = tls.VersionTLS13
	c.NextProtos = []string{ALPN}
	return c
}

// A DATA frame of maxFrameSize fills exactly four TLS records with its
// 9-byte header. A frame of a round 64 KiB would end in a fifth record
// holding the last 9 bytes: one more write and read system call and one
// more record to seal and open for every frame.
const (
	tlsRecordPayload = 16 << 10 // TLS 1.3 maximum plaintext per record
	frameHeaderLen   = 9
)

// Forwarded is the Forwarded header value that names a as the original
// client (RFC 7239: IPv6 in brackets, quoted), as Istio's ztunnel sends
// it.
func Forwarded(a netip.Addr) string {
	if a.Is6() {
		return `for="[` + a.String() + `]"`
	}
	return "for=" + a.String()
}

// ParseForwarded reads the for= address of the first element of a
// Forwarded header (RFC 7239): an IP address, quoted or not, IPv6 in
// brackets, with or without a port.
func ParseForwarded(h string) (netip.Addr, bool) {
	first, _, _ := strings.Cut(h, ",")
	for pair := range strings.SplitSeq(first, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		v = strings.Trim(v, `"`)
		if ap, err := netip.ParseAddrPort(v); err == nil {
			return ap.Addr().Unmap(), true
		}
		a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(v, "["), "]"))
		if err != nil || a.Zone() != "" {
			return netip.Addr{}, false
		}
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}
