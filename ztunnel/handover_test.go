package ztunnel_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/ztunnel"
)

// opened is a tunnel's istio_tcp_connections_opened_total, all series.
func opened(t *testing.T, z *ztunnel.Ztunnel) float64 {
	t.Helper()
	mfs, err := z.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "istio_tcp_connections_opened_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// successor starts a second tunnel of node name beside old, on old's
// shared outbound and readiness ports; t owns it.
func (m *mesh) successor(t testing.TB, name string, old *node) *node {
	t.Helper()
	return m.startNodeAt(t, name, m.ca, nil, old.z.OutboundAddr().String(), old.z.ReadinessAddr())
}

// drain shuts z down in the background with a minute for its drain; the
// channel gets Shutdown's result.
func drain(z *ztunnel.Ztunnel) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		done <- z.Shutdown(ctx)
	}()
	return done
}

// echoNew opens n new connections from the client pod to server, checks
// that each echoes and closes it; with held set, it checks after each
// that the held connection still echoes.
func (m *mesh) echoNew(t *testing.T, server netip.AddrPort, n int, what string, held net.Conn) {
	t.Helper()
	for i := range n {
		c := m.outbound(t, m.ip(1), server)
		expectEcho(t, c, server, fmt.Sprintf("%s %d", what, i))
		c.Close()
		if held != nil {
			expectEcho(t, held, server, fmt.Sprintf("held %s %d", what, i))
		}
	}
}

// TestHandover upgrades each node's tunnel as the chart's DaemonSet does
// (docs/upgrades.md): a second tunnel of the node starts beside the
// first on the same ports (shared listeners), takes the new connections
// once ready, and the first drains. Through both replacements new
// connections all succeed, and a connection held through the old tunnel
// keeps working until it ends by itself, which ends the drain early.
func TestHandover(t *testing.T) {
	m := newMesh(t, meshOptions{shared: true})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	parent := t // the new tunnels outlive their subtest
	for _, tt := range []struct {
		node string
		old  func() *node
		set  func(*node)
	}{
		// Node B first: the server's side (inbound HBONE); node A's
		// pooled HBONE connection to the old tunnel gets GOAWAY.
		{"node-b", func() *node { return m.b }, func(n *node) { m.b = n }},
		// Node A: the client's side (outbound listener).
		{"node-a", func() *node { return m.a }, func(n *node) { m.a = n }},
	} {
		t.Run(tt.node, func(t *testing.T) {
			held := m.outbound(t, m.ip(1), server)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("node A log:\n%s", m.a.log)
				}
			})
			expectEcho(t, held, server, "before")
			old := tt.old()
			next := m.successor(parent, tt.node, old)
			if !next.z.Serving() {
				t.Fatal("new tunnel ready but not serving")
			}
			drained := drain(old.z)
			m.echoNew(t, server, 20, "new", held)
			select {
			case err := <-drained:
				t.Fatalf("old tunnel drained (%v) while a connection through it was open", err)
			default:
			}
			held.Close()
			if err := <-drained; err != nil {
				t.Errorf("drain after the held connection ended: %v, want nil (ended before the deadline)", err)
			}
			// Node A's pool may have kept its connection to the old
			// tunnel until its GOAWAY; now every new one is the new
			// tunnel's.
			before := opened(t, next.z)
			m.echoNew(t, server, 5, "after", nil)
			if got := opened(t, next.z) - before; got != 5 {
				t.Errorf("connections the new tunnel opened after the old one drained: got %v, want 5", got)
			}
			tt.set(next)
		})
	}
}

// TestHandoverWaitsForSuccessor: a tunnel told to stop before its
// successor is ready (the kubelet took the old tunnel's answer on the
// shared readiness port for the new one's) keeps its listeners open and
// serving until the successor answers ready, then hands over: no
// moment without a listener.
func TestHandoverWaitsForSuccessor(t *testing.T) {
	m := newMesh(t, meshOptions{shared: true, handoverWait: time.Minute})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	old := m.a
	drained := drain(old.z)
	// Stopping, but alone: it still takes and serves new connections.
	m.echoNew(t, server, 5, "waiting", nil)
	next := m.successor(t, "node-a", old)
	old.log.waitFor(t, "successor ready; closing listeners")
	before := opened(t, next.z)
	m.echoNew(t, server, 5, "handed over", nil)
	if got := opened(t, next.z) - before; got < 5 {
		t.Errorf("connections the successor opened after the handover: got %v, want 5", got)
	}
	if err := <-drained; err != nil {
		t.Errorf("drain: %v, want nil", err)
	}
}

// TestHandoverHeldAcrossBoth replaces the server's node's tunnel and then
// the client's while one connection stays open through the old ones:
// it keeps working while both drain.
func TestHandoverHeldAcrossBoth(t *testing.T) {
	m := newMesh(t, meshOptions{shared: true})
	server := netip.AddrPortFrom(m.ip(11), 8080)
	held := m.outbound(t, m.ip(1), server)
	expectEcho(t, held, server, "before")
	oldB := m.b
	m.b = m.successor(t, "node-b", oldB)
	drain(oldB.z)
	m.echoNew(t, server, 5, "b replaced", held)
	oldA := m.a
	m.a = m.successor(t, "node-a", oldA)
	drain(oldA.z)
	m.echoNew(t, server, 5, "a replaced", held)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("old node A log:\n%s\nold node B log:\n%s", oldA.log, oldB.log)
		}
	})
}
