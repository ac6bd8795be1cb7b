package labmesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/ambitmesh/ambit/internal/identity"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/ztunnel/admin"
	"github.com/ambitmesh/ambit/ztunnel/config"
)

// Where istiod runs in the lab: on the control-plane node, as it would
// run as a Deployment on a real cluster, reached by ztunnels at the
// control-plane node's address.
const (
	IstiodNamespace      = "istio-system"
	ZtunnelSA            = "ztunnel"
	IstiodSA             = "istiod"
	AgentSA              = "ambit-cni-agent"
	IstiodSecurePort     = 15012
	IstiodMonitoringAddr = "127.0.0.1:15014"
	// IstiodServerName is the name in istiod's serving certificate that
	// clients check, its Service's name on a real cluster.
	IstiodServerName = "istiod.istio-system.svc"
)

// IstiodOptions configure the istiod a test runs.
type IstiodOptions struct {
	// CertTTL is the lifetime of workload certificates; 0 is istiod's
	// default (24h).
	CertTTL time.Duration
}

// IstiodAddr is istiod's TLS address (CA and xDS) as nodes reach it.
func IstiodAddr() string {
	return fmt.Sprintf("%s:%d", lab.ControlPlaneIP(), IstiodSecurePort)
}

// StartIstiod installs the CRDs and the istio-system namespace (once)
// and starts istiod on the control-plane node; it returns when istiod is
// ready and has published the mesh root, which it writes to RootCertPath.
func (m *Mesh) StartIstiod(ctx context.Context, opts IstiodOptions) error {
	if m.istiodKubeconfig == "" {
		if err := m.installIstioBase(ctx); err != nil {
			return err
		}
	}
	m.istiodOpts = opts
	// As the chart runs it: no plaintext xDS, no debug endpoints.
	args := []string{
		"--kubeconfig", m.istiodKubeconfig,
		"--secure-addr", fmt.Sprintf(":%d", IstiodSecurePort),
		"--monitoring-addr", IstiodMonitoringAddr,
		"--dns-name", IstiodServerName,
	}
	if opts.CertTTL > 0 {
		args = append(args, "--cert-ttl", opts.CertTTL.String())
	}
	// Waypoints run as the lab's pods (waypoint.go).
	args = append(args, "--waypoint-image="+lab.WaypointImage)
	if err := m.istiodEndpoints(ctx); err != nil {
		return err
	}
	m.starts++
	p, err := m.l.StartProcessIn(m.l.ControlPlaneNS(), fmt.Sprintf("istiod-%d", m.starts), nil, m.l.Binaries().Istiod, args...)
	if err != nil {
		return err
	}
	m.istiod, m.istiodExternal = p, false
	if err := lab.WaitHTTP(ctx, m.l.ControlPlaneNS(), "http://"+IstiodMonitoringAddr+"/ready", time.Minute, p); err != nil {
		return err
	}
	return m.writeRoot(ctx)
}

// UseIstiod makes p the mesh's istiod: a control plane the caller started
// on the control-plane node that serves the CA and xDS at IstiodAddr with
// a certificate for IstiodServerName and publishes the mesh root as
// istiod does (Istio's own pilot-discovery, in the interop suite). It
// waits for the root and writes it to RootCertPath; ztunnels started
// after take their config and certificates from p. StopIstiod stops it;
// RestartIstiod refuses, not knowing how to start it.
func (m *Mesh) UseIstiod(ctx context.Context, p *lab.Process) error {
	m.istiod, m.istiodExternal = p, true
	return m.writeRoot(ctx)
}

// StopIstiod stops istiod (SIGTERM).
func (m *Mesh) StopIstiod() {
	if m.istiod != nil {
		m.istiod.Stop(5 * time.Second)
	}
}

// RestartIstiod stops istiod and starts it again with the same options.
func (m *Mesh) RestartIstiod(ctx context.Context) error {
	if m.istiodExternal {
		return errors.New("restart istiod: it was started by the caller (UseIstiod)")
	}
	m.StopIstiod()
	return m.StartIstiod(ctx, m.istiodOpts)
}

// Istiod is the running istiod process, or nil.
func (m *Mesh) Istiod() *lab.Process { return m.istiod }

// RootCertPath is the mesh root as ztunnels mount it from the
// istio-ca-root-cert ConfigMap.
func (m *Mesh) RootCertPath() string { return filepath.Join(m.l.Dir, "istio-root-cert.pem") }

func (m *Mesh) writeRoot(ctx context.Context) error {
	_, root, err := WaitRoot(ctx, m.l, IstiodNamespace)
	if err != nil {
		return err
	}
	if err := os.WriteFile(m.RootCertPath(), []byte(root), 0o644); err != nil {
		return fmt.Errorf("write mesh root: %w", err)
	}
	return nil
}

// WaitRoot waits, watching, until istiod has published the mesh root in
// namespace ns (ConfigMap istio-ca-root-cert) and returns it as a pool
// and as PEM.
func WaitRoot(ctx context.Context, l *lab.Lab, ns string) (*x509.CertPool, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := l.Client.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + ca.RootCertConfigMap})
	if err != nil {
		return nil, "", fmt.Errorf("watch configmap %s/%s: %w", ns, ca.RootCertConfigMap, err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		cm, ok := ev.Object.(*corev1.ConfigMap)
		if !ok || cm.Data[ca.RootCertKey] == "" {
			continue
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(cm.Data[ca.RootCertKey])) {
			return nil, "", fmt.Errorf("configmap %s/%s: %s is not PEM", ns, ca.RootCertConfigMap, ca.RootCertKey)
		}
		return pool, cm.Data[ca.RootCertKey], nil
	}
	return nil, "", fmt.Errorf("configmap %s/%s: not published: %w", ns, ca.RootCertConfigMap, ctx.Err())
}

// installIstioBase does what installing the Helm chart does before its
// workloads run: the CRDs, the istio-system namespace, and the chart's
// service accounts, RBAC, Service and admission policies, taken from the
// rendered chart. istiod then runs with nothing but its service account's
// token, so every test with istiod also checks the chart's RBAC.
func (m *Mesh) installIstioBase(ctx context.Context) error {
	root, err := lab.FindRoot()
	if err != nil {
		return err
	}
	if err := InstallCRDs(ctx, m.l, filepath.Join(root, "deploy", "crds")); err != nil {
		return err
	}
	if err := m.installAccess(ctx); err != nil {
		return err
	}
	// A day: the interactive demo may run for hours. On a cluster the
	// kubelet renews the projected token.
	exp := int64(24 * 3600)
	tr, err := m.l.Client.CoreV1().ServiceAccounts(IstiodNamespace).CreateToken(ctx, IstiodSA, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for istiod: %w", err)
	}
	kc, err := TokenKubeconfig(m.l, "istiod", tr.Status.Token)
	if err != nil {
		return err
	}
	m.istiodKubeconfig = kc
	return nil
}

// installAccess creates istio-system and applies the rendered chart's
// service accounts, RBAC and admission policies, once.
func (m *Mesh) installAccess(ctx context.Context) error {
	return m.installChartAccess(ctx, func(runtime.Object) bool { return true })
}

// InstallDataPlaneAccess is what StartAgent and StartIstiod install
// first (istio-system, the chart's access) without the chart's objects
// for Ambit's istiod (labelled app=istiod: its service account, RBAC,
// Service and admission policy), for a mesh whose istiod is another's
// (UseIstiod) and comes with its own. The caller runs it before
// StartAgent.
func (m *Mesh) InstallDataPlaneAccess(ctx context.Context) error {
	return m.installChartAccess(ctx, func(o runtime.Object) bool {
		mo, err := meta.Accessor(o)
		return err == nil && mo.GetLabels()["app"] != "istiod"
	})
}

func (m *Mesh) installChartAccess(ctx context.Context, keep func(runtime.Object) bool) error {
	if m.accessInstalled {
		return nil
	}
	root, err := lab.FindRoot()
	if err != nil {
		return err
	}
	if err := m.l.CreateNamespace(ctx, IstiodNamespace, nil); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	objs, err := ChartObjects(filepath.Join(root, RenderedChart))
	if err != nil {
		return err
	}
	if err := ApplyAccess(ctx, m.l.Client, slices.DeleteFunc(objs, func(o runtime.Object) bool { return !keep(o) })); err != nil {
		return err
	}
	m.accessInstalled = true
	return nil
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates the CustomResourceDefinitions in dir's YAML files
// and waits, watching, until the apiserver serves each (Established).
func InstallCRDs(ctx context.Context, l *lab.Lab, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("find CRDs in %s: got %d files (%v)", dir, len(files), err)
	}
	return InstallCRDFiles(ctx, l, files...)
}

// InstallCRDFiles creates the CustomResourceDefinitions in files (YAML,
// one or more documents each; objects of other kinds are an error) and
// waits, watching, until the apiserver serves each (Established).
func InstallCRDFiles(ctx context.Context, l *lab.Lab, files ...string) error {
	dyn, err := dynamic.NewForConfig(l.RESTConfig)
	if err != nil {
		return fmt.Errorf("create dynamic client: %w", err)
	}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read CRD: %w", err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("decode CRD %s: %w", f, err)
			}
			if obj.Object == nil {
				continue // an empty document
			}
			if obj.GetKind() != "CustomResourceDefinition" {
				return fmt.Errorf("create CRDs from %s: got a %s, want only CustomResourceDefinitions", f, obj.GetKind())
			}
			if _, err := dyn.Resource(crdResource).Create(ctx, &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create CRD from %s: %w", f, err)
			}
			names = append(names, obj.GetName())
		}
	}
	for _, name := range names {
		if err := waitEstablished(ctx, dyn, name); err != nil {
			return err
		}
	}
	return nil
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := dyn.Resource(crdResource).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		return fmt.Errorf("watch CRD %s: %w", name, err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			continue
		}
		u, ok := ev.Object.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
	}
	return fmt.Errorf("CRD %s: not established: %w", name, ctx.Err())
}

// ztunnelIdentity makes the Pod that stands for ztunnel on node n and
// writes a token bound to it, audience istio-ca, where ztunnel reads it.
// istiod's CA learns ztunnel's node from that binding.
func (m *Mesh) ztunnelIdentity(ctx context.Context, n *lab.Node) (tokenPath string, err error) {
	token, err := m.podToken(ctx, n, "ztunnel", ZtunnelSA, "istio-proxy", []string{ca.Audience}, 3600)
	if err != nil {
		return "", err
	}
	tokenPath = m.ZtunnelTokenPath(n)
	if err := os.MkdirAll(filepath.Dir(tokenPath), 0o755); err != nil {
		return "", fmt.Errorf("ztunnel dir: %w", err)
	}
	if err := os.WriteFile(tokenPath, []byte(token), 0o600); err != nil {
		return "", fmt.Errorf("write ztunnel token: %w", err)
	}
	return tokenPath, nil
}

// ZtunnelTokenPath is where ztunnel on node n reads its token (audience
// istio-ca, bound to its pod), once StartZtunnel has run there.
func (m *Mesh) ZtunnelTokenPath(n *lab.Node) string {
	return filepath.Join(m.l.Dir, "ztunnel-"+n.Name, "istio-token")
}

// podToken makes (once) the Pod <app>-<node> in istio-system that stands
// for a DaemonSet's pod on node n (its container only sleeps; the lab
// runs the component as a process), host-network as the chart's are (so
// istiod sends it as a HOST_NETWORK workload at the node's address, which
// no tunnel may serve), and returns a token of service
// account sa bound to it, as the pod's projected token is: the apiserver
// puts the node's name into it, which admission policies check.
func (m *Mesh) podToken(ctx context.Context, n *lab.Node, app, sa, container string, audiences []string, seconds int64) (string, error) {
	name := app + "-" + n.Name
	pod, err := m.l.Client.CoreV1().Pods(IstiodNamespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = m.l.RunPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: IstiodNamespace, Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{
				NodeName:           n.Name,
				HostNetwork:        true,
				ServiceAccountName: sa,
				Containers: []corev1.Container{{
					Name: container, Image: "ambit.dev/echo",
					Command: []string{"/bin/sleep", "infinity"},
				}},
			},
		})
	}
	if err != nil {
		return "", fmt.Errorf("%s pod on %s: %w", app, n.Name, err)
	}
	tr, err := m.l.Client.CoreV1().ServiceAccounts(IstiodNamespace).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:         audiences,
			ExpirationSeconds: &seconds,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s on %s: %w", app, n.Name, err)
	}
	return tr.Status.Token, nil
}

// WaitZtunnels waits until the config dump of every running ztunnel
// satisfies cond: how a test knows that what it changed in the cluster
// has reached the data plane.
func (m *Mesh) WaitZtunnels(ctx context.Context, what string, cond func(d *admin.Dump) bool) error {
	for name, p := range m.ztunnels {
		select {
		case <-p.Exited():
			continue
		default:
		}
		var last string
		err := lab.WaitHTTPBody(ctx, m.l.Node(name).NS, ZtunnelAdmin+"/config_dump", time.Minute, func(body string) bool {
			var d admin.Dump
			if err := json.Unmarshal([]byte(body), &d); err != nil {
				last = err.Error()
				return false
			}
			return cond(&d)
		})
		if err != nil {
			return fmt.Errorf("ztunnel on %s: wait for %s: %w %s", name, what, err, last)
		}
	}
	return nil
}

// WaitWorkload waits until every ztunnel knows the workload at ip and
// whether it speaks HBONE.
func (m *Mesh) WaitWorkload(ctx context.Context, ip string, hbone bool) error {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return fmt.Errorf("wait for workload: %w", err)
	}
	return m.WaitZtunnels(ctx, fmt.Sprintf("workload %s (HBONE %t)", ip, hbone), func(d *admin.Dump) bool {
		for _, w := range d.Workloads {
			if slices.Contains(w.Addresses, addr) {
				return w.HBONE() == hbone
			}
		}
		return false
	})
}

// WaitPolicy waits until every ztunnel has the authorization policy
// namespace/name and, if it selects workloads, has it bound to the
// workload at ip (present), or no longer has it (!present).
func (m *Mesh) WaitPolicy(ctx context.Context, namespace, name, ip string, present bool) error {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return fmt.Errorf("wait for policy: %w", err)
	}
	key := namespace + "/" + name
	return m.WaitZtunnels(ctx, fmt.Sprintf("policy %s on %s (present %t)", key, ip, present), func(d *admin.Dump) bool {
		i := slices.IndexFunc(d.Policies, func(a *config.Authorization) bool { return a.Key() == key })
		if !present || i < 0 {
			return (i >= 0) == present
		}
		if d.Policies[i].Scope != config.ScopeWorkloadSelector {
			return true
		}
		for _, w := range d.Workloads {
			if slices.Contains(w.Addresses, addr) {
				return slices.Contains(w.AuthorizationPolicies, key)
			}
		}
		return false
	})
}

// WaitCertificates waits until every certificate every ztunnel manages
// is available (after the CA or the apiserver was away long enough for
// short-lived certificates to expire).
func (m *Mesh) WaitCertificates(ctx context.Context) error {
	return m.WaitZtunnels(ctx, "certificates available", func(d *admin.Dump) bool {
		for _, c := range d.Certificates {
			if c.State != identity.StateAvailable {
				return false
			}
		}
		return true
	})
}
