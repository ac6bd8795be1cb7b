package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	metaapi "istio.io/api/meta/v1alpha1"
	pb "istio.io/api/security/v1alpha1"
	secapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/enrolment"
	"github.com/ambitmesh/ambit/internal/kubewatch"
	"github.com/ambitmesh/ambit/internal/lab"
	"github.com/ambitmesh/ambit/istiod/ca"
	"github.com/ambitmesh/ambit/istiod/gateway"
	"github.com/ambitmesh/ambit/istiod/server"
)

// renderedChart is the Helm chart rendered with its defaults into
// istio-system, kept equal to the chart by deploy/charts/charttest (this
// module does not depend on Helm).
const renderedChart = "testdata/helm/ambit.yaml"

// chartObjects decodes the rendered chart into typed objects.
func chartObjects(t *testing.T) []runtime.Object {
	t.Helper()
	objs, err := labmesh.ChartObjects(renderedChart)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func chartObject[T interface {
	runtime.Object
	metav1.Object
}](t *testing.T, objs []runtime.Object, name string) T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.(T); ok && v.GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("%s: no %T named %s", renderedChart, zero, name)
	return zero
}

func mustKubeconfig(t *testing.T, l *lab.Lab, name, token string) string {
	t.Helper()
	path, err := labmesh.TokenKubeconfig(l, name, token)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// clientWithToken is the test's own client with token as its only
// credential, to check what the token may do.
func clientWithToken(t *testing.T, l *lab.Lab, token string) kubernetes.Interface {
	t.Helper()
	rc := rest.AnonymousClientConfig(l.RESTConfig)
	rc.BearerToken = token
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// identityPod runs, on node, a pod made from a chart pod template (its
// service account and projected token volumes; a container that only
// sleeps): the pod the DaemonSet or Deployment would run there, which
// the lab stands in for with a process. Its tokens are bound to it.
func identityPod(ctx context.Context, t *testing.T, l *lab.Lab, ns, name, node string, tmpl corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: tmpl.Labels},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			ServiceAccountName:           tmpl.Spec.ServiceAccountName,
			AutomountServiceAccountToken: tmpl.Spec.AutomountServiceAccountToken,
			Containers: []corev1.Container{{
				Name: tmpl.Spec.Containers[0].Name, Image: lab.EchoImage, Command: []string{"/bin/sleep", "infinity"},
			}},
		},
	}
	for _, v := range tmpl.Spec.Volumes {
		if v.Projected != nil {
			p.Spec.Volumes = append(p.Spec.Volumes, v)
		}
	}
	got, err := l.RunPod(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// podFile reads a file the kubelet stand-in wrote for a pod (its
// service-account token, its projected volumes).
func podFile(ctx context.Context, t *testing.T, l *lab.Lab, ns, name, rel string) string {
	t.Helper()
	out, err := l.Exec(ctx, ns, name, "sh", "-c", `cat "$`+lab.PodDirEnv+`/`+rel+`"`)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// podDir is where the kubelet stand-in keeps a pod's files.
func podDir(ctx context.Context, t *testing.T, l *lab.Lab, ns, name string) string {
	t.Helper()
	out, err := l.Exec(ctx, ns, name, "printenv", lab.PodDirEnv)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// setpriv runs a program as a container with the given capabilities
// (and no others) would: root, with the bounding set reduced to them.
func setpriv(bin string, caps []corev1.Capability, args ...string) (string, []string) {
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(string(c))
	}
	return "setpriv", append([]string{"--bounding-set=" + set, "--inh-caps=-all", "--no-new-privs", "--", bin}, args...)
}

// forbidden are the log lines of an authorisation failure.
var forbidden = regexp.MustCompile(`(?i)forbidden`)

func checkLog(t *testing.T, name string, p *lab.Process) {
	t.Helper()
	for line := range strings.SplitSeq(p.Logs(100000), "\n") {
		if forbidden.MatchString(line) {
			t.Errorf("%s log: got %q, want no authorisation failures", name, line)
		}
	}
}

// deniedByPolicy waits until a dry-run request is refused by the named
// admission policy: admission policies take effect shortly after they
// are created, and a dry run changes nothing meanwhile.
func deniedByPolicy(ctx context.Context, t *testing.T, what, policy string, req func() error) {
	t.Helper()
	var last error
	err := lab.PollUntil(ctx, 30*time.Second, func() bool {
		last = req()
		return apierrors.IsForbidden(last) && strings.Contains(last.Error(), "ValidatingAdmissionPolicy '"+policy+"'")
	})
	if err != nil {
		t.Errorf("%s: got %v, want refused by admission policy %s", what, last, policy)
	}
}

func wantForbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: got %v, want forbidden", what, err)
	}
}

var dryRun = []string{metav1.DryRunAll}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestHelmRBAC installs the chart's service accounts, RBAC, Service and
// admission policies in the lab and runs the real istiod, node agent and
// ztunnel as the chart's containers: their arguments and environment,
// only their service accounts' tokens (not system:masters), only their
// capabilities. It checks that they do their work together and are
// refused what the chart does not grant.
func TestHelmRBAC(t *testing.T) {
	l := startLab(t, lab.Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	const ns = labmesh.IstiodNamespace
	objs := chartObjects(t)
	root, err := lab.FindRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The chart's crds/ are copies of deploy/crds (charttest checks).
	if err := labmesh.InstallCRDs(ctx, l, filepath.Join(root, "deploy", "crds")); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	if err := labmesh.ApplyAccess(ctx, l.Client, objs); err != nil {
		t.Fatal(err)
	}
	node1, node2 := l.Nodes[0], l.Nodes[1]

	// istiod in the network namespace of a pod made from its Deployment,
	// as the Deployment's container: its arguments, a token of its
	// service account bound to that pod, no capability. Clients reach it
	// through the chart's Service.
	istiodDep := chartObject[*appsv1.Deployment](t, objs, "istiod")
	istiodPod := identityPod(ctx, t, l, ns, "istiod-0", node1.Name, istiodDep.Spec.Template)
	istiodNS, ok := node1.Kubelet.PodNetNS(ns, istiodPod.Name)
	if !ok {
		t.Fatalf("pod %s/%s: no network namespace", ns, istiodPod.Name)
	}
	istiodToken := podFile(ctx, t, l, ns, istiodPod.Name, "serviceaccount/token")
	discovery := istiodDep.Spec.Template.Spec.Containers[0]
	if add := discovery.SecurityContext.Capabilities.Add; len(add) > 0 {
		t.Fatalf("istiod's container adds capabilities %v; this test runs it with none", add)
	}
	bin, args := setpriv(l.Binaries().Istiod, nil, append(slices.Clone(discovery.Args), "--kubeconfig", mustKubeconfig(t, l, "istiod", istiodToken))...)
	istiod, err := l.StartProcessIn(istiodNS, "istiod", nil, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	// The Deployment's readiness probe, as the kubelet sends it: from the
	// node to the pod's address.
	readyPath, readyPort := discovery.ReadinessProbe.HTTPGet.Path, discovery.ReadinessProbe.HTTPGet.Port.String()
	if err := lab.WaitHTTP(ctx, node1.NS, "http://"+net.JoinHostPort(istiodPod.Status.PodIP, readyPort)+readyPath, time.Minute, istiod); err != nil {
		t.Fatal(err)
	}
	svc, err := l.Client.CoreV1().Services(ns).Get(ctx, "istiod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitServiceProgrammed(ctx, ns, "istiod", istiodPod.Status.PodIP); err != nil {
		t.Fatal(err)
	}
	// The name ztunnel checks in istiod's certificate; the lab's nodes do
	// not resolve cluster names, so ztunnel dials the ClusterIP.
	istiodName := "istiod." + ns + ".svc"
	istiodAddr := net.JoinHostPort(svc.Spec.ClusterIP, "15012")

	// ztunnel's pod on node1, made from its DaemonSet: its projected
	// istio-ca token.
	zds := chartObject[*appsv1.DaemonSet](t, objs, "ztunnel")
	ztPod := identityPod(ctx, t, l, ns, "ztunnel-node1", node1.Name, zds.Spec.Template)
	var ztTokenRel string
	for _, v := range zds.Spec.Template.Spec.Volumes {
		if v.Projected != nil && v.Projected.Sources[0].ServiceAccountToken != nil {
			st := v.Projected.Sources[0].ServiceAccountToken
			if st.Audience != ca.Audience {
				t.Errorf("ztunnel token: audience %q, want %s", st.Audience, ca.Audience)
			}
			ztTokenRel = filepath.Join("volumes", v.Name, st.Path)
		}
	}
	ztToken := podFile(ctx, t, l, ns, ztPod.Name, ztTokenRel)

	t.Run("istiod publishes the root to a new namespace", func(t *testing.T) {
		if err := l.CreateNamespace(ctx, "helm-app", nil); err != nil {
			t.Fatal(err)
		}
		if root := waitRoot(ctx, t, l, "helm-app"); root == nil {
			t.Fatal("no root")
		}
	})

	t.Run("istiod writes policy status", func(t *testing.T) {
		istio, err := istioclient.NewForConfig(l.RESTConfig)
		if err != nil {
			t.Fatal(err)
		}
		// istiod reports a policy it cannot enforce as written: this one
		// needs a waypoint.
		ap := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "get-only", Namespace: "helm-app"},
			Spec: secapi.AuthorizationPolicy{Rules: []*secapi.Rule{{
				To: []*secapi.Rule_To{{Operation: &secapi.Operation{Methods: []string{"GET"}}}},
			}}},
		}
		if _, err := istio.SecurityV1().AuthorizationPolicies(ap.Namespace).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		w, err := istio.SecurityV1().AuthorizationPolicies(ap.Namespace).Watch(wctx, metav1.ListOptions{FieldSelector: "metadata.name=" + ap.Name})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		for ev := range w.ResultChan() {
			if p, ok := ev.Object.(*securityv1.AuthorizationPolicy); ok && slices.ContainsFunc(p.Status.Conditions, func(c *metaapi.IstioCondition) bool {
				return c.GetType() == server.ConditionZtunnelAccepted && strings.Contains(c.GetMessage(), "waypoint")
			}) {
				return
			}
		}
		t.Fatalf("policy %s/%s: no condition %s about the waypoint: %v", ap.Namespace, ap.Name, server.ConditionZtunnelAccepted, wctx.Err())
	})

	t.Run("istiod signs for ztunnel with its projected token", func(t *testing.T) {
		if _, err := l.Client.CoreV1().ServiceAccounts("helm-app").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "frontend"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.RunEchoPod(ctx, "helm-app", "frontend", node1.Name, "frontend", nil); err != nil {
			t.Fatal(err)
		}
		roots := waitRoot(ctx, t, l, "helm-app")
		// From node1, through the Service, as ztunnel reaches istiod.
		cc, err := grpc.NewClient(istiodAddr,
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return node1.NS.DialContext(ctx, "tcp", addr)
			}),
			grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: istiodName})))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		const id = "spiffe://cluster.local/ns/helm-app/sa/frontend"
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(id)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := pb.NewIstioCertificateServiceClient(cc).CreateCertificate(
			metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ztToken),
			&pb.IstioCertificateRequest{
				Csr:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
				Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{ca.ImpersonatedIdentity: structpb.NewStringValue(id)}},
			})
		if err != nil {
			t.Fatalf("CreateCertificate for %s with ztunnel's token: %v", id, err)
		}
		blk, _ := pem.Decode([]byte(resp.GetCertChain()[0]))
		if blk == nil {
			t.Fatal("leaf: not PEM")
		}
		leaf, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
			t.Errorf("leaf SANs: got %v, want %s", leaf.URIs, id)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("leaf: %v, want it to chain to the published root", err)
		}
		// ztunnel's token is not an API credential.
		_, err = clientWithToken(t, l, ztToken).CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsUnauthorized(err) {
			t.Errorf("list pods with ztunnel's istio-ca token: got %v, want unauthorized", err)
		}
	})

	t.Run("istiod deploys a waypoint and reports bindings", func(t *testing.T) {
		// With the chart's access only: it applies the waypoint's
		// ServiceAccount, Service and Deployment (the chart's
		// --waypoint-image), writes the Gateway's status and a bound
		// Service's istio.io/WaypointBound.
		gw, err := gatewayclient.NewForConfig(l.RESTConfig)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gw.GatewayV1().Gateways("helm-app").Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "helm-app", Name: "waypoint"},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gateway.WaypointClass,
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: gateway.ListenerProtocolHBONE}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Client.CoreV1().Services("helm-app").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "helm-app", Name: "bound", Labels: map[string]string{"istio.io/use-waypoint": "waypoint"}},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "bound"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		until := func(what string, lw cache.ListerWatcher, obj runtime.Object, cond func(runtime.Object) bool) {
			t.Helper()
			if _, err := watchtools.UntilWithSync(wctx, lw, obj, nil, func(e watch.Event) (bool, error) {
				return e.Type != watch.Deleted && cond(e.Object), nil
			}); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
		var image string
		for _, a := range discovery.Args {
			if v, ok := strings.CutPrefix(a, "--waypoint-image="); ok {
				image = v
			}
		}
		if image == "" {
			t.Fatalf("istiod's args %q: no --waypoint-image", discovery.Args)
		}
		deps := l.Client.AppsV1().Deployments("helm-app")
		until("waypoint deployment", kubewatch.Named(deps, "waypoint"),
			&appsv1.Deployment{}, func(o runtime.Object) bool {
				d, ok := o.(*appsv1.Deployment)
				return ok && len(d.OwnerReferences) == 1 && d.Spec.Template.Spec.Containers[0].Image == image
			})
		gws := gw.GatewayV1().Gateways("helm-app")
		until("gateway accepted with addresses", kubewatch.Named(gws, "waypoint"),
			&gatewayv1.Gateway{}, func(o runtime.Object) bool {
				g, ok := o.(*gatewayv1.Gateway)
				return ok && apimeta.IsStatusConditionTrue(g.Status.Conditions, "Accepted") && len(g.Status.Addresses) > 0
			})
		svcs := l.Client.CoreV1().Services("helm-app")
		until("bound service's condition", kubewatch.Named(svcs, "bound"),
			&corev1.Service{}, func(o runtime.Object) bool {
				s, ok := o.(*corev1.Service)
				return ok && apimeta.IsStatusConditionTrue(s.Status.Conditions, gateway.ConditionWaypointBound)
			})
	})

	t.Run("istiod may do nothing else", func(t *testing.T) {
		c := clientWithToken(t, l, istiodToken)
		_, err := c.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
		wantForbidden(t, "list secrets in kube-system", err)
		_, err = c.CoreV1().Secrets(ns).Get(ctx, "someone-elses", metav1.GetOptions{})
		wantForbidden(t, "get another secret in its namespace", err)
		// It lists and watches ConfigMaps (waypoint customisations, as
		// Istio's istiod reads them), but changes only the root's.
		_, err = c.CoreV1().ConfigMaps("helm-app").Update(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "helm-app", Name: "not-the-root"}}, metav1.UpdateOptions{DryRun: dryRun})
		wantForbidden(t, "update another configmap", err)
		_, err = c.CoreV1().ConfigMaps(ns).Get(ctx, "someone-elses", metav1.GetOptions{})
		wantForbidden(t, "get another configmap by name", err)
		if _, err := c.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + ca.RootCertConfigMap}); err != nil {
			t.Errorf("list configmaps named %s: %v, want allowed", ca.RootCertConfigMap, err)
		}
		_, err = c.CoreV1().Pods("helm-app").Create(ctx, lab.EchoPod("helm-app", "x", node1.Name, nil), metav1.CreateOptions{DryRun: dryRun})
		wantForbidden(t, "create a pod", err)
		deniedByPolicy(ctx, t, "create another configmap", "ambit-istiod", func() error {
			_, err := c.CoreV1().ConfigMaps("helm-app").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "not-the-root"}}, metav1.CreateOptions{DryRun: dryRun})
			return err
		})
		deniedByPolicy(ctx, t, "create another secret", "ambit-istiod", func() error {
			_, err := c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-the-ca"}}, metav1.CreateOptions{DryRun: dryRun})
			return err
		})
	})

	// The node agent, with the token of a pod made from its DaemonSet,
	// the DaemonSet's arguments (the lab's paths given after them win),
	// and only the DaemonSet's capabilities. Its plugin uses the same
	// credentials.
	ads := chartObject[*appsv1.DaemonSet](t, objs, "ambit-cni-agent")
	agentPod := identityPod(ctx, t, l, ns, "ambit-cni-agent-node1", node1.Name, ads.Spec.Template)
	agentToken := podFile(ctx, t, l, ns, agentPod.Name, "serviceaccount/token")
	ac := ads.Spec.Template.Spec.Containers[0]
	agentArgs := append(slices.Clone(ac.Args),
		"--node-name", node1.Name,
		"--host-ip", node1.IP.String(), // HOST_IP, from status.hostIP
		"--kubeconfig", mustKubeconfig(t, l, "ambit-cni-agent", agentToken),
		"--cni-conf-dir", node1.CNIConfDir,
		"--cni-bin-dir", node1.CNIBinDir,
		"--plugin-binary", l.Binaries().CNIPlugin,
		"--pin-dir", l.BPFPinDir(node1),
		"--socket", filepath.Join(filepath.Dir(node1.CNIConfDir), "ambit-cni.sock"),
		"--monitor-addr", labmesh.AgentMonitorAddr,
	)
	bin, args = setpriv(l.Binaries().CNIAgent, ac.SecurityContext.Capabilities.Add, agentArgs...)
	agent, err := l.StartProcess(node1, "ambit-cni-agent", nil, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.WaitHTTP(ctx, node1.NS, "http://"+labmesh.AgentMonitorAddr+"/readyz", time.Minute, agent); err != nil {
		t.Fatal(err)
	}

	t.Run("the node agent enrols and annotates a pod", func(t *testing.T) {
		if err := l.CreateNamespace(ctx, "helm-mesh", map[string]string{enrolment.LabelDataplaneMode: enrolment.ModeAmbient}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"web", "client"} {
			if _, err := l.Client.CoreV1().Pods("helm-mesh").Create(ctx, lab.EchoPod("helm-mesh", name, node1.Name, nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			_, err := l.WaitPod(ctx, "helm-mesh", name, func(p *corev1.Pod) bool {
				return p.Annotations[enrolment.AnnotationRedirection] == enrolment.AnnotationEnabled
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("the node agent may do nothing else", func(t *testing.T) {
		c := clientWithToken(t, l, agentToken)
		_, err := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		wantForbidden(t, "list secrets", err)
		err = c.CoreV1().Pods("helm-mesh").Delete(ctx, "web", metav1.DeleteOptions{DryRun: dryRun})
		wantForbidden(t, "delete a pod", err)
		patch := func(ns, name string, meta map[string]any) func() error {
			return func() error {
				_, err := c.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, mustJSON(map[string]any{"metadata": meta}), metav1.PatchOptions{DryRun: dryRun})
				return err
			}
		}
		deniedByPolicy(ctx, t, "label a pod", "ambit-cni-agent", patch("helm-mesh", "web", map[string]any{"labels": map[string]string{"x": "y"}}))
		deniedByPolicy(ctx, t, "annotate a pod otherwise", "ambit-cni-agent", patch("helm-mesh", "web", map[string]any{"annotations": map[string]string{"x": "y"}}))
		// A pod of node2 is not node1's agent's to enrol.
		other := lab.EchoPod("helm-mesh", "elsewhere", node2.Name, nil)
		if _, err := l.Client.CoreV1().Pods(other.Namespace).Create(ctx, other, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deniedByPolicy(ctx, t, "annotate a pod of another node", "ambit-cni-agent",
			patch(other.Namespace, other.Name, map[string]any{"annotations": map[string]string{enrolment.AnnotationRedirection: enrolment.AnnotationEnabled}}))
		// What it does do stays allowed.
		if err := patch("helm-mesh", "web", map[string]any{"annotations": map[string]any{enrolment.AnnotationRedirection: nil}})(); err != nil {
			t.Errorf("remove the redirection annotation of a pod of its node (dry run): %v, want allowed", err)
		}
	})

	// ztunnel as the DaemonSet's container on node1: its arguments and
	// environment, the pod's istio-ca token, the root from the ConfigMap
	// its volume mounts, and only the container's capabilities. It takes
	// its workloads from istiod and their certificates from istiod's CA,
	// and carries client to web, both enrolled on node1, through its
	// transparent listeners (IP_TRANSPARENT) and its same-node HBONE dial
	// (SO_MARK).
	var ztunnel *lab.Process
	t.Run("ztunnel works as the DaemonSet runs it", func(t *testing.T) {
		zc := zds.Spec.Template.Spec.Containers[0]
		cm, err := l.Client.CoreV1().ConfigMaps(ns).Get(ctx, ca.RootCertConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rootPath := filepath.Join(l.Dir, "ztunnel-node1-"+ca.RootCertKey)
		if err := os.WriteFile(rootPath, []byte(cm.Data[ca.RootCertKey]), 0o644); err != nil {
			t.Fatal(err)
		}
		// The kubelet stand-in's file of the projected token.
		tokenPath := filepath.Join(podDir(ctx, t, l, ns, ztPod.Name), ztTokenRel)
		// The lab's paths and the Service's address, after the
		// DaemonSet's arguments, win.
		args := append(slices.Clone(zc.Args),
			"--xds-address", istiodAddr, "--xds-server-name", istiodName, "--xds-root-cert", rootPath, "--xds-token", tokenPath,
			"--ca-address", istiodAddr, "--ca-server-name", istiodName, "--ca-root-cert", rootPath, "--ca-token", tokenPath,
		)
		var env []string
		for _, e := range zc.Env {
			v := e.Value
			if e.ValueFrom != nil {
				switch e.ValueFrom.FieldRef.FieldPath {
				case "spec.nodeName":
					v = node1.Name
				case "metadata.name":
					v = ztPod.Name
				case "metadata.namespace":
					v = ns
				case "status.podIP", "status.hostIP": // host network
					v = node1.IP.String()
				default:
					t.Fatalf("ztunnel env %s: field %s unknown to the test", e.Name, e.ValueFrom.FieldRef.FieldPath)
				}
			}
			env = append(env, e.Name+"="+v)
		}
		bin, args := setpriv(l.Binaries().Ztunnel, zc.SecurityContext.Capabilities.Add, args...)
		ztunnel, err = l.StartProcess(node1, "ztunnel", env, bin, args...)
		if err != nil {
			t.Fatal(err)
		}
		if err := lab.WaitHTTP(ctx, node1.NS, labmesh.ZtunnelReadyURL, time.Minute, ztunnel); err != nil {
			t.Fatal(err)
		}
		web, err := l.Client.CoreV1().Pods("helm-mesh").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// ztunnel is ready with its config; web must be in it as HBONE.
		err = lab.WaitHTTPBody(ctx, node1.NS, labmesh.ZtunnelAdmin+"/config_dump", time.Minute, func(body string) bool {
			return strings.Contains(body, web.Status.PodIP)
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := l.Exec(ctx, "helm-mesh", "client", l.Binaries().Echo, "tcp", net.JoinHostPort(web.Status.PodIP, "9000"), "through-ztunnel")
		if err != nil || !strings.Contains(string(out), `"hostname":"web"`) {
			t.Fatalf("client to web on node1: got %s, %v; want web's echo", out, err)
		}
		if log := ztunnel.Logs(200); !strings.Contains(log, `"config":"xds"`) || !strings.Contains(log, "spiffe://cluster.local/ns/helm-mesh/sa/default") {
			t.Errorf("ztunnel log: want config from xds and a connection with the client's identity, got:\n%s", log)
		}
	})

	procs := map[string]*lab.Process{"istiod": istiod, "node agent": agent, "ztunnel": ztunnel}
	for name, p := range procs {
		if p == nil {
			continue
		}
		p.Stop(5 * time.Second)
		checkLog(t, name, p)
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.Logs(60))
		}
	}
}

// waitRoot waits for the mesh root istiod publishes in ns.
func waitRoot(ctx context.Context, t *testing.T, l *lab.Lab, ns string) *x509.CertPool {
	t.Helper()
	roots, _, err := labmesh.WaitRoot(ctx, l, ns)
	if err != nil {
		t.Fatal(err)
	}
	return roots
}
