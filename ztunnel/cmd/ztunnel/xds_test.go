package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/ambitmesh/ambit/api/workload"
	"github.com/ambitmesh/ambit/istiod/ambient"
	istiodxds "github.com/ambitmesh/ambit/istiod/xds"
)

// freePort is a loopback port nothing listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// TestBinaryWithXDS runs the ztunnel binary against istiod's xDS server
// (plaintext, in this process, on loopback): it becomes ready once the
// config has arrived, and its config dump shows what istiod sent. No root
// needed: the local workload's address is on loopback.
func TestBinaryWithXDS(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// A loopback address of this test's own (the ztunnel package's
	// tests use 127.100-249.x.x).
	wlIP := fmt.Sprintf("127.%d.%d.1", 20+rand.IntN(80), 1+rand.IntN(250))
	s := istiodxds.New(istiodxds.Options{Types: ambient.XDSTypes()})
	uid := "Kubernetes//Pod/shop/web-1"
	if err := s.Update(ambient.AuthorizationType, nil); err != nil {
		t.Fatal(err)
	}
	err := s.Update(ambient.AddressType, map[string]proto.Message{uid: &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{
		Uid: uid, Name: "web-1", Namespace: "shop", ServiceAccount: "web", Node: "node-a",
		Addresses: [][]byte{net.ParseIP(wlIP).To4()}, TunnelProtocol: workload.TunnelProtocol_HBONE,
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	served := make(chan struct{})
	go func() {
		defer close(served)
		g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-served
	})

	admin, ready := freePort(t), freePort(t)
	cmd := exec.Command(bin, "--node", "node-a", "--redirect", "nat",
		"--xds-address", lis.Addr().String(), "--xds-plaintext", "--fake-ca-dir", filepath.Join(dir, "ca"),
		"--outbound", "127.0.0.1:0", "--admin", admin, "--metrics", "", "--readiness", ready, "--liveness", "", "--log-level", "warn")
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("ztunnel log:\n%s", logs.String())
		}
	})

	hc := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	get := func(url string) (int, string) {
		resp, err := hc.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		code, body := get("http://" + ready + "/healthz/ready")
		if code == http.StatusOK {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("readiness: got %d %q, want 200 once the xDS config arrived", code, body)
		case <-tick.C:
		}
	}
	if code, body := get("http://" + admin + "/config_dump"); code != http.StatusOK || !strings.Contains(body, uid) || !strings.Contains(body, wlIP) {
		t.Errorf("config dump: got %d %s, want 200 with %s at %s", code, body, uid, wlIP)
	}
	if len(s.Clients()) != 1 || !strings.HasPrefix(s.Clients()[0].Node, "ztunnel~") {
		t.Errorf("istiod's clients: got %+v, want one ztunnel", s.Clients())
	}
}
