package waypoint

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
)

// WebSocket over HTTP/2 (RFC 8441). An HTTP/2 client opens a WebSocket
// with an extended CONNECT (:protocol websocket); the connection
// manager turns it into the HTTP/1.1 upgrade it stands for (GET with
// Upgrade and Connection), so routes, filters and upgrade_configs see
// what they see for an HTTP/1.1 client, as Envoy's codec does
// (http2_protocol_options.allow_connect); the endpoint gets the HTTP/1.1
// upgrade, and its 101 becomes the stream's 200, after which the stream
// carries the WebSocket's bytes both ways.
//
// Go's HTTP/2 server (net/http, and x/net/http2 alike) announces
// SETTINGS_ENABLE_CONNECT_PROTOCOL and accepts :protocol only when the
// process starts with GODEBUG http2xconnect=1 (read once, at package
// initialisation: golang/go#71128); ExecWithExtendedConnect restarts the
// process with it.

// ExtendedConnect reports whether this process's HTTP/2 server accepts
// extended CONNECT (GODEBUG http2xconnect=1, as net/http reads it).
func ExtendedConnect() bool {
	return strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1")
}

// ExecWithExtendedConnect replaces the process with the same program and
// arguments, GODEBUG http2xconnect=1 added, unless GODEBUG already sets
// http2xconnect (either way); it returns only when it does not exec, or
// when exec fails.
func ExecWithExtendedConnect() error {
	if strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=") {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find executable: %w", err)
	}
	if err := syscall.Exec(exe, os.Args, extendedConnectEnv(os.Environ())); err != nil {
		return fmt.Errorf("exec %s with GODEBUG http2xconnect=1: %w", exe, err)
	}
	return nil
}

// extendedConnectEnv is environ with http2xconnect=1 added to its
// GODEBUG. The entry is replaced, not added beside it: a process reads
// the first of two (os.Getenv), so a pod that set GODEBUG had the
// waypoint exec itself again and again, never starting.
func extendedConnectEnv(environ []string) []string {
	out := make([]string, 0, len(environ)+1)
	godebug, seen := "", false
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if !seen {
				godebug, seen = v, true
			}
			continue
		}
		out = append(out, kv)
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+"http2xconnect=1")
}

// extendedConnect turns an extended CONNECT into the HTTP/1.1 upgrade
// it stands for; the stream's body is kept for the tunnel, the request
// has none. A WebSocket upgrade without a key gets one (RFC 8441 has
// none; an HTTP/1.1 WebSocket server requires it), and version 13.
func (r *h2Responder) extendedConnect(req *http.Request) {
	proto := req.Header.Get(":protocol")
	req.Header.Del(":protocol")
	req.Method = http.MethodGet
	req.Header.Set("Upgrade", proto)
	req.Header.Set("Connection", "Upgrade")
	if strings.EqualFold(proto, "websocket") {
		if req.Header.Get("Sec-Websocket-Key") == "" {
			var key [16]byte
			rand.Read(key[:])
			req.Header.Set("Sec-Websocket-Key", base64.StdEncoding.EncodeToString(key[:]))
		}
		if req.Header.Get("Sec-Websocket-Version") == "" {
			req.Header.Set("Sec-Websocket-Version", "13")
		}
	}
	r.down = req.Body
	req.Body, req.ContentLength = http.NoBody, 0
}

// tunnel answers an extended CONNECT whose upgrade the endpoint
// accepted (101): 200, then the stream and the endpoint's connection
// joined until either ends.
func (r *h2Responder) tunnel(resp *http.Response) bool {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		r.abort()
		return false
	}
	defer up.Close()
	h := r.w.Header()
	for k, vs := range resp.Header {
		switch k {
		case "Upgrade", "Connection", "Sec-Websocket-Accept":
			continue // HTTP/1.1's handshake, not the stream's (RFC 8441 section 5)
		}
		h[k] = vs
	}
	r.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(r.w)
	if err := rc.Flush(); err != nil {
		r.abort()
		return false
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, r.down)
		up.Close() // the client ended its stream: the endpoint's side ends too
	}()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := up.Read(buf)
		if n > 0 {
			w, werr := r.w.Write(buf[:n])
			r.written += int64(w)
			if werr != nil || rc.Flush() != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	up.Close()
	r.down.Close()
	<-done
	return false
}
