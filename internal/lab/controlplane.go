package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambitmesh/ambit/internal/netns"
)

// startControlPlane runs etcd, kube-apiserver and kube-controller-manager
// in the control-plane namespace and opens the loopback forwarder to the
// apiserver.
func (l *Lab) startControlPlane(ctx context.Context) error {
	var err error
	if l.pki, err = newPKI(filepath.Join(l.Dir, "pki")); err != nil {
		return err
	}
	p := l.pki
	apiCert, apiKey, err := p.issue("apiserver", "kube-apiserver", nil,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain},
		[]net.IP{net.IPv4(127, 0, 0, 1), controlPlaneIP.AsSlice(), net.ParseIP("10.96.0.1")})
	if err != nil {
		return err
	}
	// The apiserver's client certificate towards kubelets (exec, logs,
	// port-forward on real nodes).
	kubeletClientCert, kubeletClientKey, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	saPub, saKey, err := p.serviceAccountKey()
	if err != nil {
		return err
	}

	logDir := filepath.Join(l.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}

	etcd, err := startProcess(l.ID, logDir, "etcd", l.cp, nil, l.cfg.Binaries.Etcd,
		"--name", "lab",
		"--data-dir", filepath.Join(l.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379",
		"--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "lab=http://127.0.0.1:2380",
		"--unsafe-no-fsync",
	)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, etcd)
	if err := waitFor(ctx, "etcd", 30*time.Second, etcd, func(ctx context.Context) error {
		return httpGet(ctx, l.cp, nil, "http://127.0.0.1:2379/health")
	}); err != nil {
		return err
	}

	issuer := "https://kubernetes.default.svc." + ClusterDomain
	l.apiArgs = []string{
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "0.0.0.0",
		"--secure-port", fmt.Sprint(apiPort),
		"--advertise-address", controlPlaneIP.String(),
		"--cert-dir", filepath.Join(l.Dir, "apiserver"),
		"--tls-cert-file", apiCert,
		"--tls-private-key-file", apiKey,
		"--client-ca-file", p.CAFile,
		"--kubelet-client-certificate", kubeletClientCert,
		"--kubelet-client-key", kubeletClientKey,
		"--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--service-account-key-file", saPub,
		"--service-account-signing-key-file", saKey,
		"--service-account-issuer", issuer,
		"--api-audiences", issuer,
		"--service-cluster-ip-range", ServiceCIDR,
		"--authorization-mode", "Node,RBAC",
		"--allow-privileged=true",
		"--profiling=false",
		"--endpoint-reconciler-type", "lease",
		"--v", "1",
	}
	apiserver, err := startProcess(l.ID, logDir, "kube-apiserver", l.cp, nil, l.cfg.Binaries.KubeAPIServer, l.apiArgs...)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, apiserver)
	l.apiIndex = len(l.procs) - 1

	if err := l.startForwarder(); err != nil {
		return err
	}
	adminCert, adminKey, err := p.issue("admin", "ambit-lab-admin", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	l.Kubeconfig = filepath.Join(l.Dir, "admin.kubeconfig")
	if err := p.kubeconfig(l.Kubeconfig, "https://"+l.apiAddr, adminCert, adminKey); err != nil {
		return err
	}
	if l.RESTConfig, err = restConfig(l.Kubeconfig); err != nil {
		return err
	}
	if l.Client, err = kubernetes.NewForConfig(l.RESTConfig); err != nil {
		return fmt.Errorf("create kubernetes client: %w", err)
	}
	if err := waitFor(ctx, "kube-apiserver", 90*time.Second, apiserver, func(ctx context.Context) error {
		return l.readyz(ctx)
	}); err != nil {
		return err
	}

	kcmCert, kcmKey, err := p.issue("kube-controller-manager", "system:kube-controller-manager", nil, nil, nil)
	if err != nil {
		return err
	}
	kcmConfig := filepath.Join(l.Dir, "kube-controller-manager.kubeconfig")
	if err := p.kubeconfig(kcmConfig, "https://127.0.0.1:"+fmt.Sprint(apiPort), kcmCert, kcmKey); err != nil {
		return err
	}
	kcm, err := startProcess(l.ID, logDir, "kube-controller-manager", l.cp, nil, l.cfg.Binaries.KubeControllerManager,
		"--kubeconfig", kcmConfig,
		"--authentication-kubeconfig", kcmConfig,
		"--authorization-kubeconfig", kcmConfig,
		"--bind-address", "127.0.0.1",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file", saKey,
		"--root-ca-file", p.CAFile,
		"--cluster-signing-cert-file", p.CAFile,
		"--cluster-signing-key-file", filepath.Join(p.dir, "ca.key"),
		"--cluster-cidr", ClusterCIDR,
		"--service-cluster-ip-range", ServiceCIDR,
		"--allocate-node-cidrs=false",
		"--controllers", "*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
		"--v", "1",
	)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, kcm)
	// The controller-manager is working once it has made the default
	// namespace's service account.
	return waitFor(ctx, "kube-controller-manager", 60*time.Second, kcm, func(ctx context.Context) error {
		_, err := l.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", getOpts)
		return err
	})
}

// startForwarder listens on a loopback port of the host and forwards each
// connection to the apiserver inside the control-plane namespace.
func (l *Lab) startForwarder() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for apiserver forwarder: %w", err)
	}
	l.apiAddr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
				defer dcancel()
				up, err := l.cp.DialContext(dctx, "tcp", fmt.Sprintf("127.0.0.1:%d", apiPort))
				if err != nil {
					c.Close()
					return
				}
				stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
				defer stop()
				copyBoth(c, up)
			}()
		}
	}()
	l.stopFwd = func() {
		cancel()
		ln.Close()
		<-done
	}
	return nil
}

// APIServerAddr is the host loopback address that forwards to the
// apiserver.
func (l *Lab) APIServerAddr() string { return l.apiAddr }

func (l *Lab) readyz(ctx context.Context) error {
	body, err := l.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("readyz: %w: %s", err, body)
	}
	return nil
}

// waitFor polls check until it succeeds, the timeout passes, or proc (if
// any) exits. Polling is the only way to learn that a program that offers
// no events has become ready.
func waitFor(ctx context.Context, what string, timeout time.Duration, proc *process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		var exited <-chan struct{}
		if proc != nil {
			exited = proc.done
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("wait for %s: %v (last: %v)", what, ctx.Err(), last)
			if proc != nil {
				msg += "\n" + proc.tail(30)
			}
			return errors.New(msg)
		case <-exited:
			return fmt.Errorf("wait for %s: process exited: %v\n%s", what, proc.err, proc.tail(30))
		case <-tick.C:
		}
	}
}

// httpGetBody GETs url from inside ns, wants 200 and returns the body.
func httpGetBody(ctx context.Context, ns *netns.NS, url string) (string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: ns.DialContext}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("get %s: status %d", url, resp.StatusCode)
	}
	return string(body), nil
}

// HTTPGet GETs an IP URL from inside ns, wants 200 and returns the body.
func HTTPGet(ctx context.Context, ns *netns.NS, url string) (string, error) {
	return httpGetBody(ctx, ns, url)
}

// httpGet GETs url from inside ns and wants 200.
func httpGet(ctx context.Context, ns *netns.NS, tlsConfig *tls.Config, url string) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext:     ns.DialContext,
		TLSClientConfig: tlsConfig,
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// ClientFor returns a client with the given user's client certificate,
// issued by the lab CA, for tests of authorisation.
func (l *Lab) ClientFor(user string, groups ...string) (kubernetes.Interface, *rest.Config, error) {
	cert, key, err := l.pki.issue("user-"+user, user, groups, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	cfg := rest.CopyConfig(l.RESTConfig)
	cfg.TLSClientConfig.CertFile = cert
	cfg.TLSClientConfig.KeyFile = key
	cfg.TLSClientConfig.CertData = nil
	cfg.TLSClientConfig.KeyData = nil
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("create client for %s: %w", user, err)
	}
	return c, cfg, nil
}

// RestartAPIServer stops kube-apiserver (SIGTERM, as a rolling upgrade
// does) and starts it again with the same flags and data, returning once
// it is ready. Watches of every client break meanwhile; it is how tests
// check that components resync after the apiserver went away.
func (l *Lab) RestartAPIServer(ctx context.Context) error {
	old := l.procs[l.apiIndex]
	old.stop(10 * time.Second)
	p, err := startProcess(l.ID, filepath.Join(l.Dir, "logs"), "kube-apiserver", l.cp, nil, l.cfg.Binaries.KubeAPIServer, l.apiArgs...)
	if err != nil {
		return err
	}
	l.procs[l.apiIndex] = p
	return waitFor(ctx, "kube-apiserver", 90*time.Second, p, func(ctx context.Context) error {
		return l.readyz(ctx)
	})
}
