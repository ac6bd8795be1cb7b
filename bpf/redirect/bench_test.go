package redirect

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/origdst"
	"github.com/ambitmesh/ambit/internal/testutil"
)

// benchNode is a node namespace with two pods wired by the ptp plugin.
type benchNode struct {
	node, client, server *netns.NS
	clientIP, serverIP   netip.Addr
}

func newBenchNode(b testing.TB) *benchNode {
	b.Helper()
	testutil.RequireRoot(b)
	dir := b.TempDir()
	mk := func(name string) *netns.NS {
		ns, err := netns.Create(fmt.Sprintf("ambit-bench-%d-%s", os.Getpid(), name))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ns.Delete() })
		return ns
	}
	n := &benchNode{node: mk("node"), client: mk("client"), server: mk("server")}
	if err := n.node.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		b.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":"bench","plugins":[
		{"type":"ptp","ipMasq":false,"mtu":1500,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.201.0.0/24"}]],
		 "routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}}]}`, filepath.Join(dir, "ipam")))
	if err != nil {
		b.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{"/usr/lib/cni"}, filepath.Join(dir, "cache"), nil)
	for _, p := range []struct {
		ns *netns.NS
		ip *netip.Addr
	}{{n.client, &n.clientIP}, {n.server, &n.serverIP}} {
		rt := &libcni.RuntimeConf{ContainerID: p.ns.Name(), NetNS: p.ns.Path(), IfName: "eth0"}
		err := n.node.Do(func() error {
			res, err := cni.AddNetworkList(context.Background(), list, rt)
			if err != nil {
				return err
			}
			r, err := current.NewResultFromResult(res)
			if err != nil {
				return err
			}
			*p.ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.node.Do(func() error { return cni.DelNetworkList(context.Background(), list, rt) }) })
	}
	return n
}

// sink accepts connections on l and discards what they send.
func sink(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
}

// transfer sends size bytes from the client pod to addr and returns how
// long it took until the receiver closed.
func (n *benchNode) transfer(b *testing.B, addr string, size int) time.Duration {
	b.Helper()
	c, err := n.client.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c) // until the sink closes: all bytes arrived
	c.Close()
	return time.Since(start)
}

// relay modes of the ztunnel stand-in.
const (
	relayNone    = iota // discard: the plaintext hop into ztunnel alone
	relayNode           // forward to the destination from the node's address
	relayPodPath        // forward from the pod's address on the pod path
)

// relay handles a connection accepted by the ztunnel stand-in: by
// *mode, it discards it or forwards it to its original destination as
// ztunnel does.
func relay(node *netns.NS, mode *atomic.Int32) func(net.Conn) {
	return func(c net.Conn) {
		m := mode.Load()
		if m == relayNone {
			io.Copy(io.Discard, c)
			return
		}
		dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
		src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		var up net.Conn
		err := node.Do(func() (err error) {
			d := &net.Dialer{}
			if m == relayPodPath {
				d = origdst.FromDialer(src, PathMark)
			}
			up, err = d.Dial("tcp", dst.String())
			return err
		})
		if err != nil {
			return
		}
		defer up.Close()
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, up) // until the sink closes
	}
}

// BenchmarkRedirectThroughput measures one TCP stream from a pod, side by
// side in one run: to another pod with no program attached (baseline),
// with Ambit's programs attached but the pod not enrolled (must be within
// noise of the baseline), and enrolled, into a ztunnel stand-in that
// discards (the plaintext hop into ztunnel), that forwards to the
// destination from the node's address, and that forwards it on the pod
// path (from the pod's address, re-entering through its veth, as ztunnel
// does). Reported as ratios to the baseline, and the pod path's to the
// forward from the node.
func BenchmarkRedirectThroughput(b *testing.B) {
	n := newBenchNode(b)
	const size = 64 << 20
	srv, err := n.server.Listen(context.Background(), "tcp", ":5001")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	go sink(srv)
	transparent := &net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
		return serr
	}}
	zt, err := n.node.ListenWith(context.Background(), transparent, "tcp", "0.0.0.0:15001")
	if err != nil {
		b.Fatal(err)
	}
	defer zt.Close()
	var mode atomic.Int32
	testutil.ServeListener(zt, relay(n.node, &mode))

	pinDir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("ambit-bench-%d", os.Getpid()))
	var r *Redirector
	var clientVeth, serverVeth string
	if err := n.node.Do(func() error {
		var err error
		if clientVeth, err = HostInterface(n.clientIP); err != nil {
			return err
		}
		if serverVeth, err = HostInterface(n.serverIP); err != nil {
			return err
		}
		r, err = Open(pinDir)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer n.node.Do(r.Remove)
	attach := func(on bool) {
		err := n.node.Do(func() error {
			for _, v := range []string{clientVeth, serverVeth} {
				var err error
				if on {
					err = r.AttachPod(v)
				} else {
					err = r.Detach(v)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	enroll := func(on bool) {
		err := n.node.Do(func() error {
			if on {
				return r.Enroll(n.clientIP)
			}
			return r.Unenroll(n.clientIP)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	addr := net.JoinHostPort(n.serverIP.String(), "5001")
	var none, attached, enrolled, fromNode, podPath time.Duration
	b.SetBytes(5 * size)
	b.ResetTimer()
	for range b.N {
		attach(false)
		none += n.transfer(b, addr, size)
		attach(true)
		attached += n.transfer(b, addr, size)
		enroll(true)
		mode.Store(relayNone)
		enrolled += n.transfer(b, addr, size)
		mode.Store(relayNode)
		fromNode += n.transfer(b, addr, size)
		mode.Store(relayPodPath)
		podPath += n.transfer(b, addr, size)
		enroll(false)
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(none), "none-MB/s")
	b.ReportMetric(mbps(attached), "attached-MB/s")
	b.ReportMetric(mbps(enrolled), "enrolled-MB/s")
	b.ReportMetric(mbps(attached)/mbps(none), "attached/none")
	b.ReportMetric(mbps(enrolled)/mbps(none), "enrolled/none")
	b.ReportMetric(mbps(fromNode), "relay-node-MB/s")
	b.ReportMetric(mbps(podPath), "relay-podpath-MB/s")
	b.ReportMetric(mbps(podPath)/mbps(fromNode), "podpath/node")
}
