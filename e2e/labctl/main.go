// Command labctl drives the lab (internal/lab) for people and make targets:
//
//	labctl build   build or find the programs the lab runs (cached), and
//	               Istio's pilot-discovery for the interop suite
//	labctl demo    start a lab, show pods talking, keep it up until Ctrl-C
//	labctl clean   remove what crashed labs left behind
//
// With DEMO_NONINTERACTIVE=1, demo exits after the scripted part, non-zero
// if any step failed.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambitmesh/ambit/internal/kubelog"
	"github.com/ambitmesh/ambit/internal/lab"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: labctl build|demo|clean")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The lab's informers (the kubelet stand-in's, the mesh's waits) log
	// through client-go: into the demo's output at slog levels, without
	// the errors of watches cancelled as the lab stops.
	kubelog.Route(log.Handler())
	var err error
	switch os.Args[1] {
	case "build":
		var b lab.Binaries
		b, err = lab.EnsureBinaries(ctx, lab.BuildOptions{Log: log})
		if err == nil {
			fmt.Printf("kube-apiserver: %s\ncoredns: %s\necho: %s\n", b.KubeAPIServer, b.CoreDNS, b.Echo)
			// For the interop suite (e2e/istio).
			var ist lab.Istio
			if ist, err = lab.EnsureIstio(ctx, lab.BuildOptions{Log: log}); err == nil {
				fmt.Printf("pilot-discovery (istio %s, %s): %s\n", ist.Version, ist.Revision, ist.PilotDiscovery)
			}
		}
		if err == nil {
			// Istio's echo app, the Gateway API conformance suite's echo
			// image (e2e/realnode).
			var echo lab.IstioEcho
			if echo, err = lab.EnsureIstioEcho(ctx, lab.BuildOptions{Log: log}); err == nil {
				fmt.Printf("istio echo (%s): %s %s\n", echo.ModuleVersion, echo.Server, echo.Client)
			}
		}
		if err == nil {
			// For the labs that enforce NetworkPolicy (e2e TestNetworkPolicy).
			var kr string
			if kr, err = lab.EnsureKubeRouter(ctx, lab.BuildOptions{Log: log}); err == nil {
				fmt.Printf("kube-router: %s\n", kr)
			}
		}
		if err == nil {
			// The Helm command line of the real-node suite (e2e/realnode)
			// and of `make cluster`.
			var helm string
			if helm, err = lab.EnsureHelm(ctx, lab.BuildOptions{Log: log}); err == nil {
				fmt.Printf("helm: %s\n", helm)
			}
		}
	case "demo":
		err = runDemo(ctx, log, os.Getenv("DEMO_NONINTERACTIVE") != "")
	case "clean":
		err = lab.CleanAll()
	default:
		err = fmt.Errorf("unknown command %q: want build, demo or clean", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "labctl:", err)
		os.Exit(1)
	}
}
