package realnode

import (
	"testing"
	"time"
)

// checkRestartsKeepConnections restarts, one part at a time, what `helm
// upgrade` replaces besides ztunnel, while the probe runs: the node
// agents (their redirection is pinned and taken over by the restarted
// agent, docs/upgrades.md) and istiod (ztunnel keeps its config while it
// reconnects). Neither may fail a request or end the held connection.
// The agents restart three times: their restart is the busiest moment of
// a node, when the early end of the held connection that net/http's
// Transport caused was seen (docs/upgrades.md). TestUpgrade runs it
// before the upgrade, in the same lab.
func checkRestartsKeepConnections(t *testing.T, c *cli, p *probeRun) {
	t.Helper()
	before := p.last
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
	if n, m := got.Held.Failed-before.Held.Failed, got.New.Failed-before.New.Failed; n+m != 0 {
		t.Errorf("requests failed while the agents and istiod restarted: held %d (%v), new %d (%v); want none",
			n, got.Held.Errors, m, got.New.Errors)
	}
	if got.Held.Conns != before.Held.Conns {
		t.Errorf("held connection replaced while the agents and istiod restarted (%d connections, ends %q), want it kept", got.Held.Conns, got.Held.Ends)
		out := c.must(t, c.kubectl, "logs", "-n", ReleaseNamespace, "-l", "app=ztunnel", "--prefix", "--timestamps", "--tail=-1")
		t.Logf("ztunnel logs (connections shorter than 3 s left out):\n%s", withoutShortConns(out))
	}
}
