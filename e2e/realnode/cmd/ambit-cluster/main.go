// Command ambit-cluster starts, for a person, the cluster the real-node
// tests use (`make cluster`): the lab's control plane and one real node
// (kubelet, containerd, runc), the lab registry with Ambit's images (as
// `make images` builds them) and the samples' images, and the Helm and
// kubectl programs the tests run. It prints the kubeconfig and the
// README's install commands, and tears everything down on Ctrl-C.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ambitmesh/ambit/e2e/realnode"
	"github.com/ambitmesh/ambit/internal/kubelog"
	"github.com/ambitmesh/ambit/internal/lab"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ambit-cluster:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	kubelog.Route(log.Handler())
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the cluster's node needs network and mount namespaces")
	}
	if err := lab.CleanStale(); err != nil {
		log.Warn("clean stale labs", "error", err)
	}
	root, err := lab.FindRoot()
	if err != nil {
		return err
	}
	bins, err := lab.EnsureBinaries(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		return err
	}
	helm, err := lab.EnsureHelm(ctx, lab.BuildOptions{Log: log})
	if err != nil {
		return err
	}
	l, err := lab.Start(ctx, lab.Config{Nodes: 1, RealNodes: true, Binaries: bins, Log: log})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("tearing the cluster down")
		if err := l.Close(); err != nil {
			log.Error("close lab", "error", err)
		}
	}()
	reg, err := realnode.ServeRegistry(ctx, l)
	if err != nil {
		return err
	}
	defer reg.Close()
	log.Info("building and pushing images")
	if err := reg.PushLabImages(ctx, root); err != nil {
		return err
	}
	if err := reg.PushProduct(ctx, root); err != nil {
		return err
	}
	fmt.Printf(`
A cluster with one real node is up (lab %s).

  export KUBECONFIG=%s
  export PATH=%s:%s:$PATH     # the kubectl and helm the tests use

Its registry serves Ambit's images as localhost:5000/ambit/<image> (the
chart's default hub) and the samples' as %s and %s. From the
repository root (%s), install as the README says:

%s

The node's processes run in network namespace %s and in a mount
namespace of their own: nsenter --mount=%s --net=%s -- <command>.

Ctrl-C tears the cluster down; if this process is killed,
sudo make clean-lab removes what it left.
`, l.ID, l.Kubeconfig, filepath.Dir(bins.Kubectl), filepath.Dir(helm), realnode.EchoImage, realnode.BookinfoImage, root,
		"  "+strings.Join(realnode.InstallSection(), "\n  "),
		l.Nodes[0].NS.Name(), l.Nodes[0].MountNS(), l.Nodes[0].NS.Path())
	<-ctx.Done()
	return nil
}
