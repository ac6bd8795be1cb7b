package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/netns"
	"github.com/ambitmesh/ambit/internal/testutil"
)

const twoNodes = `
workloads:
  - {uid: shop/client, name: client, namespace: shop, serviceAccount: client, addresses: [127.0.10.1], node: node-a, tunnelProtocol: HBONE}
  - uid: shop/server
    name: server
    namespace: shop
    serviceAccount: server
    addresses: [127.0.20.1]
    node: node-b
    tunnelProtocol: HBONE
    services: {shop/server.shop.svc.cluster.local: {ports: [{servicePort: 80, targetPort: 8080}]}}
services:
  - {name: server, namespace: shop, hostname: server.shop.svc.cluster.local, addresses: [{address: 127.0.30.1}], ports: [{servicePort: 80, targetPort: 8080}]}
`

// TestBinaryRedirected runs two ztunnel processes in a network namespace
// of the test's own, with the client workload's traffic captured by an
// iptables REDIRECT to node A's outbound port, as the node's redirection
// will do: the outbound finds the original destination with
// SO_ORIGINAL_DST and the connection crosses HBONE to node B.
func TestBinaryRedirected(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(cfg, []byte(twoNodes), 0o644); err != nil {
		t.Fatal(err)
	}
	ns, err := netns.Create(fmt.Sprintf("ambit-ztbin-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	ctx := context.Background()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := ns.Command(ctx, name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")
	for _, dst := range []string{"127.0.20.1", "127.0.30.1"} {
		run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "127.0.10.1", "-d", dst, "-j", "REDIRECT", "--to-ports", "15001")
	}

	logs := map[string]*strings.Builder{}
	start := func(node string, base int) {
		args := []string{"--node", node, "--local-config", cfg, "--fake-ca-dir", filepath.Join(dir, "ca"),
			"--outbound", fmt.Sprintf("127.0.0.1:%d", base+1), "--admin", fmt.Sprintf("127.0.0.1:%d", base),
			"--metrics", fmt.Sprintf("127.0.0.1:%d", base+20), "--readiness", fmt.Sprintf("127.0.0.1:%d", base+21)}
		cmd := ns.Command(ctx, bin, args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		logs[node] = &b
		done := make(chan struct{})
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			<-done
			t.Logf("%s log:\n%s", node, b.String())
		})
		sc := bufio.NewScanner(stderr)
		for sc.Scan() { // the warning comes once the listeners are bound
			b.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "development mode") {
				break
			}
		}
		go func() {
			defer close(done)
			for sc.Scan() {
				b.WriteString(sc.Text() + "\n")
			}
		}()
	}
	start("node-a", 15000)
	start("node-b", 16000)

	echo, err := ns.Listen(ctx, "tcp", "127.0.20.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	for _, dst := range []string{"127.0.20.1:8080", "127.0.30.1:80"} {
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.10.1")}, Timeout: 10 * time.Second}
			var err error
			c, err = d.Dial("tcp", dst)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		msg := "through the tunnel to " + dst
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Errorf("echo via %s: got %q, %v; want %q", dst, got, err, msg)
		}
	}
}
