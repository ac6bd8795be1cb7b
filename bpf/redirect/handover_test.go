package redirect

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
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
	greeting := func() (net.Conn, string, error) {
		c, err := n.client.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, "", err
		}
		name, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			c.Close()
			return nil, "", err
		}
		return c, name[:len(name)-1], nil
	}
	expect := func(when, want string) {
		t.Helper()
		c, got, err := greeting()
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		c.Close()
		if got != want {
			t.Fatalf("%s: accepted by %q, want %q", when, got, want)
		}
	}

	old := listen()
	oldDone := testutil.ServeListener(old, testutil.Greet("old"))
	held, name, err := greeting()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if name != "old" {
		t.Fatalf("first connection accepted by %q, want old", name)
	}

	testutil.ServeListener(listen(), testutil.Greet("new"))
	for i := range 30 {
		expect(fmt.Sprintf("connection %d after the new listener joined", i), "new")
	}

	stop := make(chan struct{})
	var dialers sync.WaitGroup
	var mu sync.Mutex
	var lost []error
	for range 4 {
		dialers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, _, err := greeting()
				if err != nil {
					mu.Lock()
					lost = append(lost, err)
					mu.Unlock()
					continue
				}
				c.Close()
			}
		})
	}
	old.Close()
	oldDone.Wait()
	for i := range 10 {
		expect(fmt.Sprintf("connection %d after the old listener closed", i), "new")
	}
	close(stop)
	dialers.Wait()
	if len(lost) > 0 {
		t.Errorf("connections lost while the old listener closed: got %d (first: %v), want none", len(lost), lost[0])
	}
	if _, err := held.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := held.Read(buf); err != nil || string(buf) != "ping" {
		t.Errorf("held connection after the handover: got %q, %v; want ping echoed", buf, err)
	}
}
