package lab

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ambitmesh/ambit/internal/netns"
)

// Process is a program a test started in the lab with StartProcess.
type Process struct{ p *process }

// StartProcess runs a program in a node's network namespace, the way a
// host-network DaemonSet pod runs (Ambit's node agent, ztunnel). Its output
// goes to the lab's logs; Close stops it if the test has not.
func (l *Lab) StartProcess(n *Node, name string, env []string, bin string, args ...string) (*Process, error) {
	return l.StartProcessIn(n.NS, name, env, bin, args...)
}

// StartProcessIn is StartProcess in any namespace of the lab (the bridge's,
// to capture what crosses the wire).
func (l *Lab) StartProcessIn(ns *netns.NS, name string, env []string, bin string, args ...string) (*Process, error) {
	p, err := startProcess(l.ID, filepath.Join(l.Dir, "logs"), name, ns, env, bin, args...)
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, p)
	return &Process{p}, nil
}

// StartProcessInDir is StartProcessIn with dir as the working directory,
// for programs that keep their files relative to it (Istio's istiod reads
// and writes ./etc/cacerts, ./var/run/secrets/...).
func (l *Lab) StartProcessInDir(ns *netns.NS, dir, name string, env []string, bin string, args ...string) (*Process, error) {
	p, err := startProcessAt(l.ID, filepath.Join(l.Dir, "logs"), dir, name, ns, env, bin, args...)
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, p)
	return &Process{p}, nil
}

// Stop sends SIGTERM, and SIGKILL after grace, and waits for the exit.
func (p *Process) Stop(grace time.Duration) { p.p.stop(grace) }

// Kill ends the process at once, as a crash would.
func (p *Process) Kill() { p.p.stop(0) }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.p.cmd.Process.Signal(sig) }

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.p.done }

// Logs returns the last lines of the process's output.
func (p *Process) Logs(lines int) string { return p.p.tail(lines) }

// KubeconfigFor writes a kubeconfig for a client certificate of user in
// groups, pointing at the apiserver's address on the node network: for
// processes that run inside the lab.
func (l *Lab) KubeconfigFor(name, user string, groups ...string) (string, error) {
	cert, key, err := l.pki.issue("kc-"+name, user, groups, nil, nil)
	if err != nil {
		return "", err
	}
	path := filepath.Join(l.Dir, name+".kubeconfig")
	if err := l.pki.kubeconfig(path, APIServerURL(), cert, key); err != nil {
		return "", err
	}
	return path, nil
}

// WaitHTTPBody waits until url answers 200 from inside ns with a body for
// which cond holds.
func WaitHTTPBody(ctx context.Context, ns *netns.NS, url string, timeout time.Duration, cond func(body string) bool) error {
	return waitFor(ctx, url, timeout, nil, func(ctx context.Context) error {
		body, err := httpGetBody(ctx, ns, url)
		if err != nil {
			return err
		}
		if !cond(body) {
			return fmt.Errorf("get %s: body not as wanted yet", url)
		}
		return nil
	})
}

// WaitHTTP waits until url answers 200 from inside ns, or p (if any)
// exits.
func WaitHTTP(ctx context.Context, ns *netns.NS, url string, timeout time.Duration, p *Process) error {
	var proc *process
	if p != nil {
		proc = p.p
	}
	return waitFor(ctx, url, timeout, proc, func(ctx context.Context) error {
		return httpGet(ctx, ns, &tls.Config{}, url)
	})
}

// PollUntil checks cond every 50ms until it holds, the timeout passes or
// ctx ends: for state that offers no event to wait on (a file appearing
// or vanishing).
func PollUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
