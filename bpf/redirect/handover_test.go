package redirect

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// TestSharedListenerHandover is a ztunnel upgrade as the eBPF redirection
// sees it: an enrolled pod's connections are handed (bpf_sk_assign) to
// the outbound listener of the old ztunnel; a new one listens beside it
// on the same port (origdst.ListenOptions.Shared) and takes every new
// connection; the old one closes its listener while the pod keeps
// connecting; no connection is lost, and the one held on the old
// listener keeps working.
func TestSharedListenerHandover(t *testing.T) {
	if !origdst.AssignsReusePort() {
		t.Fatal("kernel older than 6.5: bpf_sk_assign refuses SO_REUSEPORT listeners")
	}
	n := newBenchNode(t)
	ctx := context.Background()
	pinDir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("ambit-handover-%d", os.Getpid()))
	var r *Redirector
	if err := n.node.Do(func() error {
		veth, err := HostInterface(n.clientIP)
		if err != nil {
			return err
		}
		if r, err = Open(pinDir); err != nil {
			return err
		}
		if err := r.AttachPod(veth); err != nil {
			return err
		}
		return r.Enroll(n.clientIP)
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.node.Do(r.Remove) })

	listen := func() net.Listener {
		t.Helper()
		var ln net.Listener
		if err := n.node.Do(func() (err error) {
			ln, err = origdst.Listen(ctx, "0.0.0.0:15001", origdst.ListenOptions{Transparent: true, Shared: true})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	// The pod connects to the server pod; the redirection delivers the
	// connection to whichever listener the group picks.
	addr := net.JoinHostPort(n.serverIP.String(), "5001")
	testutil.Handover(t, ctx, n.client.DialContext, addr, listen(), listen)
}
