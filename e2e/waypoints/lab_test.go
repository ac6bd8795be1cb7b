// Package waypoints is the end-to-end suite of Ambit's L7 path: waypoint
// proxies deployed by istiod's waypoint controller and run as the lab's
// pods (the waypoint binary), between real ztunnels on two nodes, with
// the real apiserver, controller-manager and scheduler. It needs root.
package waypoints

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambitmesh/ambit/e2e/internal/labmesh"
	"github.com/ambitmesh/ambit/internal/echo"
	"github.com/ambitmesh/ambit/internal/lab"
)

// startLab starts a lab with a scheduler (waypoint Deployments' pods run
// on its nodes) and tears it down after, checking that nothing is left
// behind. On failure it prints the lab's logs.
func startLab(t *testing.T) *lab.Lab {
	t.Helper()
	return labmesh.StartRootLab(t, lab.Config{Nodes: 2, Scheduler: true}, slog.LevelInfo)
}

// echoPod runs the echo workload as service account sa on node.
func echoPod(t *testing.T, ctx context.Context, l *lab.Lab, ns, name, node, sa string, labels map[string]string) *corev1.Pod {
	t.Helper()
	got, err := l.RunEchoPod(ctx, ns, name, node, sa, labels)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// echoService is a Service over pods with the selector: HTTP on 80, TCP
// on 9000 and gRPC on 7070.
func echoService(t *testing.T, ctx context.Context, l *lab.Lab, ns, name string, selector, labels map[string]string) *corev1.Service {
	t.Helper()
	http, grpc := "http", "grpc"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), AppProtocol: &http},
				{Name: "tcp", Port: 9000, TargetPort: intstr.FromString("tcp")},
				{Name: "grpc", Port: 7070, TargetPort: intstr.FromString("grpc"), AppProtocol: &grpc},
			},
		},
	}
	got, err := l.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func createSA(t *testing.T, ctx context.Context, l *lab.Lab, ns, name string, labels map[string]string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}}
	if _, err := l.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// label sets (value non-nil) or removes a label of a namespaced object
// kind ("namespaces", "services", "serviceaccounts", "pods").
func label(t *testing.T, ctx context.Context, l *lab.Lab, kind, ns, name, key string, value *string) {
	t.Helper()
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v))
	var err error
	c := l.Client.CoreV1()
	switch kind {
	case "namespaces":
		_, err = c.Namespaces().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	case "services":
		_, err = c.Services(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	case "serviceaccounts":
		_, err = c.ServiceAccounts(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	case "pods":
		_, err = c.Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	default:
		t.Fatalf("label: kind %q unknown", kind)
	}
	if err != nil {
		t.Fatalf("label %s %s/%s %s=%v: %v", kind, ns, name, key, v, err)
	}
}

func ptr[T any](v T) *T { return &v }

// podDialer dials from inside pod ns/name (its network namespace: the
// mesh captures what it sends as the pod's own traffic).
func podDialer(t *testing.T, ctx context.Context, l *lab.Lab, ns, name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	t.Helper()
	pns, err := l.PodNetNS(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return pns.DialContext
}

// client is an HTTP client in pod ns/name; keepAlive false opens a new
// connection for every request.
func client(t *testing.T, ctx context.Context, l *lab.Lab, ns, name string, keepAlive bool) *http.Client {
	t.Helper()
	tr := &http.Transport{DialContext: podDialer(t, ctx, l, ns, name), DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// result is one HTTP exchange: the status, the echo report when the
// answer was one, and the raw body.
type result struct {
	code   int
	report echo.Report
	body   string
	header http.Header
}

func do(ctx context.Context, c *http.Client, method, url string, header map[string]string) (result, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return result{}, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return result{}, err
	}
	r := result{code: resp.StatusCode, body: strings.TrimSpace(string(b)), header: resp.Header}
	_ = json.Unmarshal(b, &r.report)
	return r, nil
}

// get sends a GET and fails the test on a transport error.
func get(t *testing.T, ctx context.Context, c *http.Client, url string, header map[string]string) result {
	t.Helper()
	r, err := do(ctx, c, http.MethodGet, url, header)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

// requestCounts reads the echo pod's /requests from inside its own pod.
func requestCounts(t *testing.T, ctx context.Context, l *lab.Lab, ns, name string) map[string]int {
	t.Helper()
	pns, err := l.PodNetNS(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	body, err := lab.HTTPGet(ctx, pns, "http://127.0.0.1:8080/requests")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("requests of %s/%s: %v (%q)", ns, name, err, body)
	}
	return got
}
