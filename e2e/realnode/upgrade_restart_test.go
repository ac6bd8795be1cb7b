package realnode

import (
	"testing"
	"time"
)

// TestRestartKeepsConnections restarts, one part at a time, what `helm
// upgrade` replaces besides ztunnel, while the probe of TestUpgrade runs:
// the node agents (their redirection is pinned and taken over by the
// restarted agent, docs/upgrades.md) and istiod (ztunnel keeps its config
// while it reconnects). Neither may fail a request or end the held
// connection. The agents restart several times: their restart is the
// busiest moment of a node, when the early end of the held connection
// that net/http's Transport caused was seen (docs/upgrades.md).
func TestRestartKeepsConnections(t *testing.T) {
	l := startRealLabN(t, 2)
	c := newCLI(t, l)
	p := startProbeMesh(t, l, c)
	for p.next().Held.OK < 30 {
	}
	before := p.last
	if before.Held.Failed+before.New.Failed != 0 || before.Held.Conns != 1 {
		t.Fatalf("probe before the restarts: %+v, want no failures and one held connection", before)
	}
	restart := func(kind, name string) {
		t.Helper()
		began := time.Now()
		c.must(t, c.kubectl, "rollout", "restart", "-n", ReleaseNamespace, kind+"/"+name)
		c.must(t, c.kubectl, "rollout", "status", "-n", ReleaseNamespace, kind+"/"+name, "--timeout=5m")
		// A few seconds more: the last pod's start.
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
			p.next()
		}
		t.Logf("%s/%s restarted in %s: %+v", kind, name, time.Since(began).Round(time.Second), p.last)
	}
	for range 3 {
		restart("daemonset", "ambit-cni-agent")
	}
	restart("deployment", "istiod")
	got := p.last
	if got.Held.Failed != 0 || got.New.Failed != 0 {
		t.Errorf("requests failed during the restarts: held %d (%v), new %d (%v); want none",
			got.Held.Failed, got.Held.Errors, got.New.Failed, got.New.Errors)
	}
	if got.Held.Conns != 1 {
		t.Errorf("held connection replaced during the restarts (%d connections, ends %q), want it kept", got.Held.Conns, got.Held.Ends)
		out := c.must(t, c.kubectl, "logs", "-n", ReleaseNamespace, "-l", "app=ztunnel", "--prefix", "--timestamps", "--tail=-1")
		t.Logf("ztunnel logs (connections shorter than 3 s left out):\n%s", withoutShortConns(out))
	}
}
