package ztunnel_test

import (
	"context"
	"crypto/tls"
	"math/big"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ambitmesh/ambit/internal/hbone"
	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Rotation needs no restart and breaks nothing: once node A's
// certificates are renewed at half-life, a connection opened before keeps
// working, new connections get a new pooled HBONE connection with the new
// certificate, and A's inbound listener presents the new certificate.
func TestCertificateRotation(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	// The first certificate of each identity is 40 minutes old, due for
	// renewal 10 minutes from now; later ones are fresh.
	var mu sync.Mutex
	issued := map[identity.Identity]int{}
	ca := &lateCA{}
	src := certSource(func(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
		mu.Lock()
		issued[id]++
		n := issued[id]
		mu.Unlock()
		if n == 1 {
			now := time.Now()
			return ca.get().IssueValidity(id, now.Add(-40*time.Minute), now.Add(60*time.Minute))
		}
		return ca.get().Certificate(ctx, id)
	})
	m := newMesh(t, meshOptions{aSource: src, aClock: fakeClock{clk}, before: func(m *mesh) { ca.set(m.ca) }})
	client := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "client"}
	server := netip.AddrPortFrom(m.ip(11), 8080)

	before, err := m.a.z.Certificate(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.inboundSerial(t, 1); got.Cmp(before.Leaf.SerialNumber) != 0 {
		t.Fatalf("inbound certificate before rotation: got serial %s, want %s", got, before.Leaf.SerialNumber)
	}
	old := m.outbound(t, m.ip(1), server)
	expectEcho(t, old, server, "before")

	clk.Step(11 * time.Minute)
	var after *tls.Certificate
	waitUntil(t, "client certificate renewed", func() bool {
		after, err = m.a.z.Certificate(context.Background(), client)
		return err == nil && after != before
	})

	expectEcho(t, old, server, "old connection after rotation")
	fresh := m.outbound(t, m.ip(1), server)
	expectEcho(t, fresh, server, "new connection after rotation")
	if got := m.poolConns(client); got != 2 {
		t.Errorf("pooled HBONE connections from the client: got %d, want 2 (the old one still carries its stream)", got)
	}
	if got := m.inboundSerial(t, 1); got.Cmp(after.Leaf.SerialNumber) != 0 {
		t.Errorf("inbound certificate after rotation: got serial %s, want the renewed %s", got, after.Leaf.SerialNumber)
	}
	expectEcho(t, old, server, "old connection still")
}

// inboundSerial handshakes with node A's tunnel port on workload host as
// the server workload and returns the serial of the certificate A shows.
func (m *mesh) inboundSerial(t *testing.T, host byte) *big.Int {
	t.Helper()
	cert, err := m.ca.Issue(identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "server"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", netip.AddrPortFrom(m.ip(host), hbone.Port).String(), &tls.Config{
		Certificates: []tls.Certificate{*cert}, InsecureSkipVerify: true, // only the serial is read
		NextProtos: []string{hbone.ALPN}, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatalf("handshake with the inbound listener: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// poolConns counts node A's pooled HBONE connections from id.
func (m *mesh) poolConns(id identity.Identity) int {
	n := 0
	for k, c := range m.a.z.PoolConns() {
		if k.Source == id {
			n += c
		}
	}
	return n
}

// waitUntil polls cond until it holds, failing after ten seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still not true after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The certificate of a workload that leaves the node is forgotten, and
// no longer renewed; one that arrives is fetched before any connection.
func TestCertificatesFollowWorkloads(t *testing.T) {
	m := newMesh(t, meshOptions{})
	dumped := func() []string {
		var ids []string
		for _, c := range m.a.z.ConfigDump().(admin.Dump).Certificates {
			ids = append(ids, c.Identity)
		}
		return ids
	}
	st := defaultState(m.ip)
	kept := st.Workloads[:0]
	for _, w := range st.Workloads {
		if w.Name != "other" {
			kept = append(kept, w)
		}
	}
	st.Workloads = append(kept, &config.Workload{
		UID: "shop/arrived", Name: "arrived", Namespace: "shop", ServiceAccount: "arrived",
		Addresses: []netip.Addr{m.ip(13)}, Node: "node-a", TunnelProtocol: config.TunnelHBONE,
	})
	if err := m.store.Replace(st); err != nil {
		t.Fatal(err)
	}
	want := []string{"spiffe://cluster.local/ns/shop/sa/arrived", "spiffe://cluster.local/ns/shop/sa/client"}
	waitUntil(t, "node A's certificates follow its workloads", func() bool {
		return cmp.Equal(want, dumped()) && m.a.z.Ready() == nil
	})
}
