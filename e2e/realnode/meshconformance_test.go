package realnode

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/apis/v1alpha2"
	"sigs.k8s.io/gateway-api/apis/v1alpha3"
	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	conformanceconfig "sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"

	"github.com/go-logr/logr"

	images "github.com/ambitmesh/ambit/deploy/images"
	"github.com/ambitmesh/ambit/internal/lab"
)

// The suite's mesh namespaces (conformance/mesh/manifests.yaml).
var meshNamespaces = []string{"gateway-conformance-mesh", "gateway-conformance-mesh-consumer"}

// meshFeatures are the features Ambit declares for the MESH-HTTP and
// MESH-GRPC profiles: what its waypoints implement and the suite has
// passed (docs/conformance.md). MeshConsumerRoute is not declared: a route in
// the consumer's namespace would have to apply to that namespace's
// traffic only, which a waypoint at the destination cannot tell (Istio's
// ambient run leaves it out for the same reason).
var meshFeatures = []features.FeatureName{
	features.SupportMesh,
	features.SupportHTTPRoute,
	features.SupportGRPCRoute,
	features.SupportMeshClusterIPMatching,
	features.SupportHTTPRouteResponseHeaderModification,
	features.SupportHTTPRouteParentRefPort,
	features.SupportHTTPRoute303RedirectStatusCode,
	features.SupportHTTPRoute307RedirectStatusCode,
	features.SupportHTTPRoute308RedirectStatusCode,
	features.SupportMeshHTTPRouteNamedRouteRule,
	features.SupportMeshHTTPRouteQueryParamMatching,
	features.SupportMeshHTTPRouteRedirectPath,
	features.SupportMeshHTTPRouteRedirectPort,
	features.SupportMeshHTTPRouteSchemeRedirect,
	features.SupportMeshHTTPRouteBackendRequestHeaderModification,
	features.SupportMeshHTTPRouteRewritePath,
}

// skippedMeshTests are tests of declared features that do not pass
// reliably today, with the reason (docs/conformance.md). The profile's
// result is then "partial", and the skipped tests are listed in the
// report.
var skippedMeshTests = map[string]string{}

// waypointYAML is a namespace waypoint as `ambitctl waypoint apply`
// writes it (and istioctl's): Gateway "waypoint" of class istio-waypoint
// with the HBONE listener.
const waypointYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  labels:
    istio.io/waypoint-for: service
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`

// TestMeshConformance runs the Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance, the version of the CRDs in
// deploy/crds) for the MESH-HTTP and MESH-GRPC profiles, through its own runner, against
// Ambit installed with Helm on two real nodes: the suite applies its
// mesh manifests (echo pods of Istio's echo app, ConformanceEchoImage) in
// namespaces it labels istio.io/dataplane-mode=ambient; each of them then
// gets a namespace waypoint, as Istio's own ambient run does
// (tests/integration/ambient/gateway_conformance_test.go), and the suite
// runs its tests with `client` exec'd in the echo pods through the real
// kubelets. CONFORMANCE_REPORT_DIR names a folder to write each
// profile's report to (docs/conformance-mesh-http.yaml and
// docs/conformance-mesh-grpc.yaml are such). CONFORMANCE_RUN_TEST
// names one test of the suite to run alone (the suite's RunTest), to
// repeat one test without the others.
func TestMeshConformance(t *testing.T) {
	began := time.Now()
	phase := func(what string) { t.Logf("%s: %s since the test began", what, time.Since(began).Round(time.Second)) }
	l := startRealLabN(t, 2)
	phase("lab started")
	ctx := t.Context()
	echo, err := lab.EnsureIstioEcho(ctx, lab.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.reg.PushConformanceEcho(ctx, l.root, echo); err != nil {
		t.Fatal(err)
	}
	phase("echo image built and pushed")
	if err := l.reg.PushProduct(ctx, l.root); err != nil {
		t.Fatal(err)
	}
	phase("Ambit's images built and pushed")
	c := newCLI(t, l)
	if _, err := c.run(ctx, c.helm, HelmInstall...); err != nil {
		t.Fatal(err)
	}
	c.must(t, c.kubectl, WaitMesh...)
	phase("helm install done, mesh ready")

	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	crlog.SetLogger(logr.Discard())
	kc, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, install := range []func(*runtime.Scheme) error{v1alpha3.Install, v1alpha2.Install, gatewayv1.Install, apiextensionsv1.AddToScheme} {
		if err := install(kc.Scheme()); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	chart, err := images.ReadChart(filepath.Join(l.root, "deploy", "charts", "ambit"))
	if err != nil {
		t.Fatal(err)
	}
	skip := make([]string, 0, len(skippedMeshTests))
	for name := range skippedMeshTests {
		skip = append(skip, name)
	}
	runTest := os.Getenv("CONFORMANCE_RUN_TEST")
	opts := suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			CleanupBaseResources: false, // the lab goes with the test
			CleanupTestResources: true,
			SupportedFeatures:    meshFeatures,
			SkipTests:            skip,
			RunTest:              runTest,
			ConformanceProfiles:  []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName},
			NamespaceLabels:      map[string]string{"istio.io/dataplane-mode": "ambient"},
			Mode:                 "default",
			Implementation: confv1.Implementation{
				Organization: "ambitmesh",
				Project:      "ambit",
				URL:          "https://github.com/ambitmesh/ambit",
				Version:      chart.AppVersion,
				Contact:      []string{"https://github.com/ambitmesh/ambit/issues"},
			},
			TimeoutConfig: conformanceconfig.DefaultTimeoutConfig(),
		},
		Client:     kc,
		Clientset:  cs,
		RestConfig: cfg,
		ManifestFS: []fs.FS{&conformance.Manifests},
	}
	cSuite, err := suite.NewConformanceTestSuite(opts)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cSuite.Setup(t, tests.ConformanceTests)
	t.Logf("suite setup (mesh manifests, echo pods Ready): %s", time.Since(start).Round(time.Second))

	// A namespace waypoint for each mesh namespace, Programmed, and the
	// namespace's services bound to it.
	for _, ns := range meshNamespaces {
		f := filepath.Join(t.TempDir(), "waypoint.yaml")
		if err := os.WriteFile(f, []byte(waypointYAML), 0o644); err != nil {
			t.Fatal(err)
		}
		c.must(t, c.kubectl, "apply", "-n", ns, "-f", f)
		c.must(t, c.kubectl, "label", "namespace", ns, "istio.io/use-waypoint=waypoint", "--overwrite")
	}
	for _, ns := range meshNamespaces {
		if _, err := c.run(ctx, c.kubectl, "wait", "-n", ns, "--for=condition=Programmed", "gateway/waypoint", "--timeout=3m"); err != nil {
			pods, _ := c.run(ctx, c.kubectl, "get", "pods", "-A", "-o", "wide")
			t.Fatalf("%v\n%s", err, pods)
		}
	}
	t.Logf("waypoints Programmed: %s", time.Since(start).Round(time.Second))
	t.Logf("pods:\n%s", c.must(t, c.kubectl, "get", "pods", "-A", "-o", "wide"))
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, ns := range meshNamespaces {
			out, _ := c.run(context.Background(), c.kubectl, "logs", "-n", ns, "deploy/waypoint", "--tail=80")
			t.Logf("waypoint logs in %s:\n%s", ns, out)
		}
	})

	// CONFORMANCE_REPEAT runs the suite that many times in the one lab.
	runs := 1
	if n := os.Getenv("CONFORMANCE_REPEAT"); n != "" {
		if runs, err = strconv.Atoi(n); err != nil || runs < 1 {
			t.Fatalf("CONFORMANCE_REPEAT=%q: want a count of runs, 1 or more", n)
		}
	}
	for i := range runs {
		// The suite's tests may be parallel subtests: they finish when
		// the subtest running them does.
		var runErr error
		t.Run("suite", func(t *testing.T) { runErr = cSuite.Run(t, tests.ConformanceTests) })
		t.Logf("suite run %d of %d: %s", i+1, runs, time.Since(start).Round(time.Second))
		if runErr != nil {
			t.Error(runErr)
		}
		checkMeshReport(t, cSuite, runTest)
	}
}

// checkMeshReport checks the suite's report of its last run: no test
// failed, none skipped but skippedMeshTests (and, when runTest names one
// test, the others), and writes it where CONFORMANCE_REPORT_DIR says.
func checkMeshReport(t *testing.T, cSuite *suite.ConformanceTestSuite, runTest string) {
	t.Helper()
	report, err := cSuite.Report()
	if err != nil {
		t.Fatal(err)
	}
	data, err := yaml.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("conformance report:\n%s", data)
	if dir := os.Getenv("CONFORMANCE_REPORT_DIR"); dir != "" {
		if err := writeProfileReports(dir, report); err != nil {
			t.Error(err)
		}
	}
	for _, p := range report.ProfileReports {
		for _, st := range []*confv1.Status{&p.Core, extended(p)} {
			if st == nil {
				continue
			}
			if st.Failed > 0 || len(st.FailedTests) > 0 {
				t.Errorf("profile %s: failed tests %v (%d), want none", p.Name, st.FailedTests, st.Failed)
			}
			for _, name := range st.SkippedTests {
				if _, ok := skippedMeshTests[name]; !ok && (runTest == "" || name == runTest) {
					t.Errorf("profile %s: test %s skipped, want it run (or listed in skippedMeshTests)", p.Name, name)
				}
			}
			if runTest == "" && st.Result != confv1.Success && !(st.Result == confv1.Partial && len(st.SkippedTests) > 0) {
				t.Errorf("profile %s: got result %s, want success (partial only for skippedMeshTests)", p.Name, st.Result)
			}
		}
	}
}

func extended(p confv1.ProfileReport) *confv1.Status {
	if p.Extended == nil {
		return nil
	}
	return &p.Extended.Status
}

// writeProfileReports writes the report of each profile in dir, as
// conformance-<profile>.yaml (conformance-mesh-http.yaml,
// conformance-mesh-grpc.yaml), each the suite's report with that
// profile only, the form in which implementations publish them.
func writeProfileReports(dir string, report *confv1.ConformanceReport) error {
	for _, p := range report.ProfileReports {
		one := *report
		one.ProfileReports = []confv1.ProfileReport{p}
		data, err := yaml.Marshal(one)
		if err != nil {
			return fmt.Errorf("marshal report of %s: %w", p.Name, err)
		}
		f := filepath.Join(dir, "conformance-"+strings.ToLower(p.Name)+".yaml")
		if err := os.WriteFile(f, data, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}
