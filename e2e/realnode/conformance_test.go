package realnode

import (
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/internal/lab"
)

// TestConformanceEcho runs the Gateway API conformance suite's echo image
// (Istio's echo app, built by the lab and served as ConformanceEchoImage)
// on the real node with the arguments of the suite's mesh manifests, and
// makes the calls the suite makes: `client` (found on the image's PATH)
// run with kubectl exec through the kubelet, over HTTP, gRPC and TLS with
// the image's certificate, to the pod's own ports.
func TestConformanceEcho(t *testing.T) {
	l := startRealLab(t)
	ctx := t.Context()
	echo, err := lab.EnsureIstioEcho(ctx, lab.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.reg.PushConformanceEcho(ctx, l.root, echo); err != nil {
		t.Fatal(err)
	}
	c := newCLI(t, l)
	c.must(t, c.kubectl, "run", "echo-v1", "-n", "default", "--image", ConformanceEchoImage, "--restart=Never", "--",
		"--tcp=9090", "--port=8080", "--grpc=7070", "--port=8443", "--tls=8443", "--crt=/cert.crt", "--key=/cert.key")
	c.must(t, c.kubectl, "wait", "-n", "default", "--for=condition=Ready", "pod/echo-v1", "--timeout=3m")
	if got := c.must(t, c.kubectl, "get", "pod", "-n", "default", "echo-v1", "-o", "jsonpath={.status.containerStatuses[0].image}"); got != ConformanceEchoImage {
		t.Errorf("pod image: got %q, want %q", got, ConformanceEchoImage)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"http://127.0.0.1:8080/conformance"}, []string{"StatusCode=200", "URL=/conformance", "Hostname=echo-v1", "Proto=HTTP/1.1"}},
		{[]string{"grpc://127.0.0.1:7070"}, []string{"StatusCode=200", "Proto=GRPC", "Hostname=echo-v1"}},
		{[]string{"https://127.0.0.1:8443/tls", "--insecure-skip-verify"}, []string{"StatusCode=200", "URL=/tls"}},
		{[]string{"tcp://127.0.0.1:9090"}, []string{"Hostname=echo-v1"}},
	} {
		out, err := c.run(ctx, c.kubectl, append([]string{"exec", "-n", "default", "echo-v1", "--", "client"}, tc.args...)...)
		if err != nil {
			t.Errorf("client %v: %v", tc.args, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("client %v: got\n%s\nwant a line with %s", tc.args, out, w)
			}
		}
	}
}
