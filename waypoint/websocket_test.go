package waypoint_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/websocket"
)

// wsEchoPods serve a WebSocket echo (RFC 6455, x/net/websocket) on both
// pods' port 8181 at /ws; each message comes back prefixed with the
// pod's name.
func wsEchoPods(t testing.TB, e *env) {
	t.Helper()
	pod := func(name string) http.HandlerFunc {
		return websocket.Server{Handler: func(ws *websocket.Conn) {
			for {
				var msg string
				if err := websocket.Message.Receive(ws, &msg); err != nil {
					return
				}
				if err := websocket.Message.Send(ws, name+": "+msg); err != nil {
					return
				}
			}
		}}.ServeHTTP
	}
	podHandlers(t, e, pod("A"), pod("B"))
}

// TestWebSocketHTTP1: a real WebSocket handshake (key and accept
// checked by the client library) and messages both ways through the
// waypoint, on the connection manager's upgrade_configs websocket (as
// istiod sets it); without it the upgrade is refused with 403, as Envoy
// refuses an upgrade it is not configured for.
func TestWebSocketHTTP1(t *testing.T) {
	e := newEnv(t, resConfig(nil))
	wsEchoPods(t, e)
	cfg, err := websocket.NewConfig("ws://"+host+"/ws", "http://"+host)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, e.tunnel(t, clientID, e.vip(resPort)))
	if err != nil {
		t.Fatalf("websocket handshake through the waypoint: %v", err)
	}
	defer ws.Close()
	var pod string
	for i, msg := range []string{"one", "two", "three"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("send %q: %v", msg, err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatalf("receive: %v", err)
		}
		if i == 0 && len(got) > 3 {
			pod = got[:3] // one connection: one pod for all messages
		}
		if want := pod + msg; got != want {
			t.Errorf("echo: got %q, want %q", got, want)
		}
	}
}

// TestWebSocketNotConfigured: without upgrade_configs websocket the
// upgrade is refused (403, as Envoy) and the pod sees no handshake.
func TestWebSocketNotConfigured(t *testing.T) {
	e := newEnv(t, resConfig(func(p *svcPort) {
		p.editHCM = func(h *hcmv3.HttpConnectionManager) { h.UpgradeConfigs = nil }
	}))
	wsEchoPods(t, e)
	c := e.resClient(t)
	resp := c.do(t, get(t, "/ws", "Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
	expectStatus(t, resp, http.StatusForbidden)
}

// wsFrame is one masked text frame, as a client sends it (RFC 6455
// section 5.2; short payloads only).
func wsFrame(msg string) []byte {
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	b := append([]byte{0x81, 0x80 | byte(len(msg))}, mask[:]...)
	for i := range len(msg) {
		b = append(b, msg[i]^mask[i%4])
	}
	return b
}

// readWSFrame reads one unmasked short text frame, as a server sends it.
func readWSFrame(r io.Reader) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", err
	}
	if h[0] != 0x81 || h[1]&0x80 != 0 || h[1] >= 126 {
		return "", fmt.Errorf("frame head %x: want an unmasked short text frame", h)
	}
	p := make([]byte, h[1])
	_, err := io.ReadFull(r, p)
	return string(p), err
}

// TestWebSocketHTTP2: an HTTP/2 client's extended CONNECT (RFC 8441,
// :protocol websocket) with the connection manager's
// http2_protocol_options.allow_connect is an upgrade to the endpoint's
// HTTP/1.1 WebSocket server (a real handshake: the waypoint supplies the
// key RFC 8441 does without); the 101 becomes the stream's 200 and
// frames pass both ways on the stream. Without allow_connect it is
// refused with 403.
func TestWebSocketHTTP2(t *testing.T) {
	for _, allow := range []bool{true, false} {
		t.Run(fmt.Sprintf("allow_connect=%v", allow), func(t *testing.T) {
			e := newEnv(t, resConfig(func(p *svcPort) {
				p.editHCM = func(h *hcmv3.HttpConnectionManager) {
					h.Http2ProtocolOptions = &core.Http2ProtocolOptions{AllowConnect: allow}
				}
			}))
			wsEchoPods(t, e)
			// (x/net's transport: net/http's refuses the :protocol
			// pseudo-header before its HTTP/2 code sees it.)
			//lint:ignore SA1019 net/http's client cannot send :protocol; x/net's is the one Go client of extended CONNECT
			tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
				return e.dialTunnel(ctx, clientID, e.vip(resPort))
			}}
			//lint:ignore SA1019 as above
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			pr, pw := io.Pipe()
			defer pw.Close()
			req, err := http.NewRequest(http.MethodConnect, "http://"+host+"/ws", pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(":protocol", "websocket")
			req.Header.Set("Sec-Websocket-Version", "13")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("extended CONNECT: %v", err)
			}
			defer resp.Body.Close()
			if !allow {
				expectStatusOnly(t, resp, http.StatusForbidden)
				return
			}
			expectStatusOnly(t, resp, http.StatusOK)
			var pod string
			for i, msg := range []string{"one", "two", "three"} {
				if _, err := pw.Write(wsFrame(msg)); err != nil {
					t.Fatalf("send %q: %v", msg, err)
				}
				got, err := readWSFrame(resp.Body)
				if err != nil {
					t.Fatalf("receive: %v", err)
				}
				if i == 0 && len(got) > 3 {
					pod = got[:3]
				}
				if want := pod + msg; got != want {
					t.Errorf("echo: got %q, want %q", got, want)
				}
			}
		})
	}
}
