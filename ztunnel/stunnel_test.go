package ztunnel_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/identity"
)

// freePort finds a port nothing listens on at ip.
func freePort(tb testing.TB, ip netip.Addr) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func writeKeyPair(tb testing.TB, path string, c *tls.Certificate) {
	tb.Helper()
	der, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		tb.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// stunnelPair starts two stunnel processes doing what the ztunnel pair
// does, in C with OpenSSL: plain TCP in at the client side, mutual TLS 1.3
// between them with the mesh's certificates, plain TCP out to target. It
// returns the client side's address, or skips when stunnel is missing.
func stunnelPair(tb testing.TB, ca *identity.CA, clientIP netip.Addr, target netip.AddrPort) (netip.AddrPort, bool) {
	tb.Helper()
	bin, err := exec.LookPath("stunnel4")
	if err != nil {
		if bin, err = exec.LookPath("stunnel"); err != nil {
			return netip.AddrPort{}, false
		}
	}
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.RootPEM(), 0o644); err != nil {
		tb.Fatal(err)
	}
	for _, p := range []struct{ file, sa string }{{"client.pem", "client"}, {"server.pem", "server"}} {
		c, err := ca.Issue(identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: p.sa}, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		writeKeyPair(tb, filepath.Join(dir, p.file), c)
	}
	in := freePort(tb, clientIP)
	tlsAddr := freePort(tb, target.Addr())
	common := "foreground = yes\npid =\ndebug = 5\nsyslog = no\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
	tlsOpts := fmt.Sprintf("CAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n", filepath.Join(dir, "ca.pem"))
	server := common + fmt.Sprintf("[hbone]\naccept = %s\nconnect = %s\ncert = %s\n", tlsAddr, target, filepath.Join(dir, "server.pem")) + tlsOpts
	client := common + fmt.Sprintf("[out]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\n", in, tlsAddr, filepath.Join(dir, "client.pem")) + tlsOpts
	for name, conf := range map[string]string{"server.conf": server, "client.conf": client} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			tb.Fatal(err)
		}
		cmd := exec.Command(bin, path)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			tb.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		// stunnel says when it listens.
		sc := bufio.NewScanner(stderr)
		ok := false
		var out []string
		for sc.Scan() {
			out = append(out, sc.Text())
			if strings.Contains(sc.Text(), "Configuration successful") {
				ok = true
				break
			}
		}
		if !ok {
			tb.Fatalf("stunnel %s did not start:\n%s", name, strings.Join(out, "\n"))
		}
		go func() {
			for sc.Scan() {
			}
		}()
	}
	return in, true
}
