package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/bpf/redirect"
	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/internal/netns"
)

// fakeZtunnel stands in for ztunnel on one node: transparent listeners on
// ztunnel's ports that answer like the echo server, with a hostname that
// names the node and port, so a test sees where a connection landed and
// with which original destination (the accepted socket's local address).
type fakeZtunnel struct {
	node   *lab.Node
	cancel map[int]context.CancelFunc
	done   map[int]chan struct{}
}

func transparentListenConfig() *net.ListenConfig {
	return &net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
}

func (z *fakeZtunnel) start(t *testing.T, port int) { z.startOn(t, "0.0.0.0", port) }

// startOn listens on host:port; a pod address as host stands for a ztunnel
// that listens per workload address.
func (z *fakeZtunnel) startOn(t *testing.T, host string, port int) {
	t.Helper()
	l, err := z.node.NS.ListenWith(t.Context(), transparentListenConfig(), "tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s := &echo.Server{Hostname: fmt.Sprintf("ztunnel-%s-%d", z.node.Name, port)}
	go func() {
		defer close(done)
		s.Serve(ctx, []net.Listener{l}, nil)
	}()
	z.cancel[port], z.done[port] = cancel, done
}

func (z *fakeZtunnel) stop(port int) {
	if c := z.cancel[port]; c != nil {
		c()
		<-z.done[port]
		delete(z.cancel, port)
	}
}

func startFakeZtunnel(t *testing.T, n *lab.Node) *fakeZtunnel {
	z := &fakeZtunnel{node: n, cancel: map[int]context.CancelFunc{}, done: map[int]chan struct{}{}}
	for _, p := range []int{15001, 15006, 15008} {
		z.start(t, p)
	}
	t.Cleanup(func() {
		for p := range z.cancel {
			z.stop(p)
		}
	})
	return z
}

// TestRedirect: the eBPF redirection steers enrolled pods' TCP to ztunnel's
// listeners with the original destination and source intact, leaves other
// traffic alone, fails closed without ztunnel, survives an agent restart
// without duplicate attachments, and uninstalls cleanly. Runs with TCX and
// with the clsact fallback.
func TestRedirect(t *testing.T) {
	l := startLab(t, lab.Config{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	const ns = "redirect"
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	// a and b are enrolled, c and d are not; a and c on node1, b and d on node2.
	pods := map[string]*corev1.Pod{}
	for name, node := range map[string]string{"a": "node1", "b": "node2", "c": "node1", "d": "node2"} {
		p, err := l.RunPod(ctx, lab.EchoPod(ns, name, node, map[string]string{"app": name}))
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	if _, err := l.Client.CoreV1().Services(ns).Create(ctx, echoService(ns, "b"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitServiceProgrammed(ctx, ns, "b", pods["b"].Status.PodIP); err != nil {
		t.Fatal(err)
	}
	svcB, err := l.Client.CoreV1().Services(ns).Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip := func(name string) string { return pods[name].Status.PodIP }
	zt := map[string]*fakeZtunnel{}
	for _, n := range l.Nodes {
		zt[n.Name] = startFakeZtunnel(t, n)
	}

	for _, mode := range []redirect.Mode{redirect.ModeTCX, redirect.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) {
			agents := map[string]*redirect.Redirector{}
			install := func() {
				t.Helper()
				for _, n := range l.Nodes {
					var r *redirect.Redirector
					err := n.NS.Do(func() error {
						var err error
						if r, err = redirect.OpenMode(l.BPFPinDir(n), mode); err != nil {
							return err
						}
						if err := r.AttachUplink("eth0"); err != nil {
							return err
						}
						for name, p := range pods {
							if p.Spec.NodeName != n.Name {
								continue
							}
							veth, err := redirect.HostInterface(netip.MustParseAddr(p.Status.PodIP))
							if err != nil {
								return err
							}
							if err := r.AttachPod(veth); err != nil {
								return err
							}
							if name == "a" || name == "b" {
								if err := r.Enroll(netip.MustParseAddr(p.Status.PodIP)); err != nil {
									return err
								}
							}
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
					agents[n.Name] = r
				}
			}
			install()
			if got := agents["node1"].Mode(); got != mode {
				t.Fatalf("mode: got %s, want %s", got, mode)
			}
			t.Cleanup(func() {
				for _, n := range l.Nodes {
					if r := agents[n.Name]; r != nil {
						if err := n.NS.Do(r.Remove); err != nil {
							t.Errorf("remove redirect on %s: %v", n.Name, err)
						}
					}
				}
			})

			cases := []struct {
				name, from, to string
				wantHost       string
				wantPeer       string
			}{
				{"enrolled to enrolled pod: outbound capture", "a", net.JoinHostPort(ip("b"), "9000"), "ztunnel-node1-15001", ip("a")},
				{"enrolled to Service VIP keeps the VIP", "a", net.JoinHostPort(svcB.Spec.ClusterIP, "9000"), "ztunnel-node1-15001", ip("a")},
				{"enrolled to outside the mesh: outbound capture", "a", net.JoinHostPort(ip("d"), "9000"), "ztunnel-node1-15001", ip("a")},
				{"outside to enrolled, other node: inbound plaintext", "c", net.JoinHostPort(ip("b"), "9000"), "ztunnel-node2-15006", ip("c")},
				{"outside to enrolled, same node: inbound plaintext", "c", net.JoinHostPort(ip("a"), "9000"), "ztunnel-node1-15006", ip("c")},
				{"outside to outside: untouched", "c", net.JoinHostPort(ip("d"), "9000"), "d", ip("c")},
			}
			for _, tc := range cases {
				rep, err := podTCP(ctx, l, ns, tc.from, tc.to)
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					continue
				}
				wantLocal := tc.to
				if tc.wantHost == "d" {
					wantLocal = net.JoinHostPort(ip("d"), "9000")
				}
				if rep.Hostname != tc.wantHost || rep.Local != wantLocal || hostOf(rep.Peer) != tc.wantPeer {
					t.Errorf("%s: got answer from %s, original destination %s, source %s; want %s, %s, %s",
						tc.name, rep.Hostname, rep.Local, hostOf(rep.Peer), tc.wantHost, wantLocal, tc.wantPeer)
				}
			}

			// HBONE from another node's ztunnel to an enrolled pod's 15008
			// lands on this node's ztunnel.
			rep, err := nsTCP(ctx, l.Node("node1").NS, net.JoinHostPort(ip("b"), "15008"))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Hostname != "ztunnel-node2-15008" || rep.Local != net.JoinHostPort(ip("b"), "15008") {
				t.Errorf("HBONE to b: got %s with destination %s, want ztunnel-node2-15008 with %s:15008", rep.Hostname, rep.Local, ip("b"))
			}
			// The kubelet's probes (node to pod) are not captured.
			rep, err = nsTCP(ctx, l.Node("node2").NS, net.JoinHostPort(ip("b"), "9000"))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Hostname != "b" {
				t.Errorf("node2 to b (probe path): got answer from %s, want b itself", rep.Hostname)
			}

			// A ztunnel that listens on each workload's own address (not the
			// wildcard) gets the same connections.
			zt["node2"].stop(15006)
			zt["node2"].startOn(t, ip("b"), 15006)
			rep, err = podTCP(ctx, l, ns, "c", net.JoinHostPort(ip("b"), "9000"))
			if err != nil || rep.Hostname != "ztunnel-node2-15006" || rep.Local != net.JoinHostPort(ip("b"), "9000") {
				t.Errorf("c to b with ztunnel listening on b's address: got %+v, %v; want ztunnel-node2-15006 with destination %s:9000", rep, err, ip("b"))
			}
			zt["node2"].stop(15006)
			zt["node2"].start(t, 15006)

			// A long-lived captured connection, to check it survives an
			// agent restart.
			aNS, ok := l.Node("node1").Kubelet.PodNetNS(ns, "a")
			if !ok {
				t.Fatal("pod a has no netns")
			}
			conn, err := aNS.DialContext(ctx, "tcp", net.JoinHostPort(ip("b"), "9000"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			lineRPC(t, conn, "ztunnel-node1-15001")

			// Agent restart: handles closed, everything reloaded from pins.
			for _, r := range agents {
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
			}
			install()
			lineRPC(t, conn, "ztunnel-node1-15001")
			var enrolled []netip.Addr
			if err := l.Node("node1").NS.Do(func() error {
				var err error
				enrolled, err = agents["node1"].Enrolled()
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if len(enrolled) != 1 || enrolled[0].String() != ip("a") {
				t.Errorf("enrolled on node1 after restart: got %v, want [%s]", enrolled, ip("a"))
			}
			if n := attachments(t, l.Node("node1"), ip("a"), mode); n != 1 {
				t.Errorf("programs on a's veth after restart: got %d, want 1", n)
			}

			// Fail closed: without ztunnel's outbound listener, an enrolled
			// pod's new connection fails; it never goes out in plaintext.
			zt["node1"].stop(15001)
			dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
			rep, err = podTCP(dctx, l, ns, "a", net.JoinHostPort(ip("d"), "9000"))
			dcancel()
			if err == nil {
				t.Errorf("a to d with ztunnel down: got an answer from %s, want the connection to fail", rep.Hostname)
			}
			var stats redirect.Stats
			l.Node("node1").NS.Do(func() error { stats, err = agents["node1"].Stats(); return err })
			if stats.DroppedNoListener == 0 {
				t.Errorf("drops without listener: got 0, want > 0")
			}
			zt["node1"].start(t, 15001)
			rep, err = podTCP(ctx, l, ns, "a", net.JoinHostPort(ip("d"), "9000"))
			if err != nil || rep.Hostname != "ztunnel-node1-15001" {
				t.Errorf("a to d after ztunnel is back: got %+v, %v; want ztunnel-node1-15001", rep, err)
			}

			// Unenrolled, a's new connections go out as they are; b is still
			// enrolled, so they are captured at b's node instead.
			if err := l.Node("node1").NS.Do(func() error { return agents["node1"].Unenroll(netip.MustParseAddr(ip("a"))) }); err != nil {
				t.Fatal(err)
			}
			rep, err = podTCP(ctx, l, ns, "a", net.JoinHostPort(ip("b"), "9000"))
			if err != nil || rep.Hostname != "ztunnel-node2-15006" || hostOf(rep.Peer) != ip("a") {
				t.Errorf("unenrolled a to b: got %+v, %v; want ztunnel-node2-15006 seeing %s", rep, err, ip("a"))
			}
		})
		// After Remove: nothing of Ambit is left on the nodes.
		for _, n := range l.Nodes {
			if got := attachments(t, n, ip(map[string]string{"node1": "a", "node2": "b"}[n.Name]), mode); got != 0 {
				t.Errorf("%s after remove: got %d programs on a pod veth, want 0", n.Name, got)
			}
		}
	}
}

// attachments counts the programs on the ingress of the pod's host veth.
func attachments(t *testing.T, n *lab.Node, podIP string, mode redirect.Mode) int {
	t.Helper()
	count := 0
	err := n.NS.Do(func() error {
		veth, err := redirect.HostInterface(netip.MustParseAddr(podIP))
		if err != nil {
			return err
		}
		iface, err := net.InterfaceByName(veth)
		if err != nil {
			return err
		}
		if mode == redirect.ModeTCX {
			res, err := link.QueryPrograms(link.QueryOptions{Target: iface.Index, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			count = len(res.Programs)
			return nil
		}
		out, err := n.NS.Command(context.Background(), "tc", "filter", "show", "dev", veth, "ingress").Output()
		if err != nil {
			return err
		}
		count = strings.Count(string(out), "ambit_redirect")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return count
}

// podTCP runs the echo client in a pod: one line to addr, one report back.
func podTCP(ctx context.Context, l *lab.Lab, ns, pod, addr string) (echo.Report, error) {
	out, err := l.Exec(ctx, ns, pod, l.Binaries().Echo, "tcp", addr, "marker")
	if err != nil {
		return echo.Report{}, err
	}
	var rep echo.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		return echo.Report{}, fmt.Errorf("decode %q: %w", out, err)
	}
	return rep, nil
}

// nsTCP is podTCP from a node's namespace.
func nsTCP(ctx context.Context, n *netns.NS, addr string) (echo.Report, error) {
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		return echo.Report{}, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "marker\n"); err != nil {
		return echo.Report{}, err
	}
	var rep echo.Report
	err = json.NewDecoder(c).Decode(&rep)
	return rep, err
}

// lineRPC sends one line on an open echo connection and checks who
// answered.
func lineRPC(t *testing.T, c net.Conn, wantHost string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "still-there\n"); err != nil {
		t.Fatalf("write on long-lived connection: %v", err)
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatalf("read on long-lived connection: %v", err)
	}
	var rep echo.Report
	if err := json.Unmarshal(line, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Hostname != wantHost || rep.Message != "still-there" {
		t.Errorf("long-lived connection: got %s/%q, want %s/still-there", rep.Hostname, rep.Message, wantHost)
	}
}

func hostOf(hostport string) string {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return h
}
