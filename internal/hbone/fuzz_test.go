package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2/hpack"
)

// FuzzCONNECT drives the server's request handling with arbitrary methods,
// authorities and headers. Whatever the request says, the server answers
// one of its four statuses and dials only a target the handler's
// Authorize approved,
// which is exactly the parsed :authority.
func FuzzCONNECT(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "")
	f.Add("GET", "10.0.0.1:80", "")
	f.Add("CONNECT", "[fd00::1]:8080", "for=10.0.0.2")
	f.Add("CONNECT", "example.com:443", "")
	f.Add("CONNECT", "10.0.0.9:80", "")
	f.Add("CONNECT", "10.0.0.1:0", "")
	f.Add("CONNECT", "[fe80::1%eth0]:80", "")
	f.Add("CONNECT", "::ffff:10.0.0.1:80", "")
	f.Add("CONNECT", "10.0.0.3:503", "")
	approved := netip.MustParseAddr("10.0.0.1")
	f.Fuzz(func(t *testing.T, method, authority, forwarded string) {
		var authorized netip.AddrPort
		var dialed []netip.AddrPort
		s := &Server{Handler: proxy(
			func(_ context.Context, r *Request) error {
				authorized = r.Target
				if r.Target.Addr() == approved || r.Target.Port() == 503 {
					return nil
				}
				if r.Target.Port()%2 == 0 {
					return ErrDenied
				}
				return ErrBadRequest
			},
			func(_ context.Context, r *Request) (net.Conn, error) {
				dialed = append(dialed, r.Target)
				if r.Target.Port() == 503 {
					return nil, errors.New("connection refused")
				}
				a, b := net.Pipe()
				b.Close()
				return a, nil
			},
		)}
		ss := &ServerStream{srv: s, ci: connInfo{peer: clientID}}
		fields := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":authority", Value: authority}, {Name: "forwarded", Value: forwarded}}
		s.dispatch(t.Context(), ss, fields)
		ss.end()
		w := struct{ Code int }{ss.status}
		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%q %q: got status %d, want 200, 400, 401 or 503", method, authority, w.Code)
		}
		_, herr := parseRequest(fields)
		target, perr := ParseTarget(method, authority)
		if herr != nil || perr != nil {
			if w.Code != http.StatusBadRequest || len(dialed) != 0 || authorized.IsValid() {
				t.Fatalf("%q %q: unparsable target: got status %d, %d dials, authorized %v; want 400, none, none", method, authority, w.Code, len(dialed), authorized)
			}
			return
		}
		if method != http.MethodConnect {
			t.Fatalf("ParseTarget accepted method %q", method)
		}
		if authorized != target {
			t.Fatalf("%q: Authorize saw %v, want %v", authority, authorized, target)
		}
		approvedTarget := target.Addr() == approved || target.Port() == 503
		if !approvedTarget && len(dialed) != 0 {
			t.Fatalf("%q: dialed %v without approval", authority, dialed)
		}
		if approvedTarget && (len(dialed) != 1 || dialed[0] != target) {
			t.Fatalf("%q: dialed %v, want exactly %v", authority, dialed, target)
		}
		if w.Code == http.StatusOK && (!approvedTarget || target.Port() == 503) {
			t.Fatalf("%q: got 200 without a connected upstream", authority)
		}
	})
}

// FuzzServerFrames feeds arbitrary bytes, after a valid SETTINGS frame,
// to the frame reader of a server connection over a pipe, with stream
// handlers that answer 200 and echo like tunnels. Whatever the bytes,
// nothing panics, the reader returns once the peer hangs up, and no
// goroutine of the connection or its streams is left behind. The seed
// corpus holds well-formed exchanges (HEADERS and DATA, CONTINUATION
// sequences, padded and prioritised frames, control frames).
func FuzzServerFrames(f *testing.F) {
	f.Fuzz(func(t *testing.T, frames []byte) {
		leaks := goleak.IgnoreCurrent()
		a, b := net.Pipe()
		// Bounds every write to the server: a reader that stops reading
		// fails the case instead of hanging it.
		b.SetWriteDeadline(time.Now().Add(10 * time.Second))
		c := newConn(a, true)
		var handlers sync.WaitGroup
		c.onRequest = func(st *stream, _ []hpack.HeaderField) {
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				defer st.releaseSlot()
				defer st.Close()
				if c.writeHeaders(st.id, []hpack.HeaderField{{Name: ":status", Value: "200"}}, false) != nil {
					return
				}
				io.Copy(st, st)
				st.CloseWrite()
			}()
		}
		// When the input ends on a frame boundary, a PING follows it and
		// the peer hangs up once it is answered: the server has acted on
		// every frame, and its stream handlers had a chance to run.
		ping := appendFrame(nil, framePing, 0, 0, []byte("fuzzdone"))
		ack := appendFrame(nil, framePing, flagAck, 0, []byte("fuzzdone"))
		acked := make(chan struct{})
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			var tail []byte
			seen := false
			buf := make([]byte, 32<<10)
			for {
				n, err := b.Read(buf)
				if !seen {
					tail = append(tail, buf[:n]...)
					if seen = bytes.Contains(tail, ack); seen {
						close(acked)
					}
					tail = tail[max(0, len(tail)-len(ack)):]
				}
				if err != nil {
					return
				}
			}
		}()
		if err := c.start(); err != nil {
			t.Fatal(err)
		}
		read := make(chan struct{})
		go func() {
			c.readLoop()
			close(read)
		}()
		b.Write(appendSettings(nil))
		b.Write(frames)
		if wholeFrames(frames) {
			if _, err := b.Write(ping); err == nil {
				select {
				case <-acked:
				case <-drained:
				}
			}
		}
		b.Close()
		waitFor(t, "the frame reader to return after the peer hung up", read)
		if c.Err() == nil {
			t.Error("connection error: got nil after the peer hung up, want why it ended")
		}
		ended := make(chan struct{})
		go func() {
			handlers.Wait()
			close(ended)
		}()
		waitFor(t, "the stream handlers to end", ended)
		waitFor(t, "the server to stop writing", drained)
		if err := goleak.Find(leaks); err != nil {
			t.Error(err)
		}
	})
}

// wholeFrames says whether b is a sequence of whole frames.
func wholeFrames(b []byte) bool {
	for len(b) >= frameHeaderLen {
		n := frameHeaderLen + int(parseFrameHeader(b).length)
		if n > len(b) {
			return false
		}
		b = b[n:]
	}
	return len(b) == 0
}

// waitFor waits until ch is closed; a case that would hang fails.
func waitFor(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("waited 10s for %s", what)
	}
}
