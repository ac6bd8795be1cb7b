package realnode

import "strings"

// The install as the README's "Installing on a real cluster" section
// shows it, command for command: TestInstall runs exactly these, with the
// Helm command line (lab.EnsureHelm) and kubectl (the lab's, built from
// the Kubernetes modules), from the repository root; TestREADME checks
// that the README shows them. localhost:5000 is the chart's default hub;
// on a lab node it, like every registry name the manifests use, resolves
// to the lab's registry.
const (
	ReleaseNamespace = "istio-system"
	AppNamespace     = "bookinfo"
	// TrustDomain is the chart's default.
	TrustDomain = "cluster.local"
)

var (
	HelmInstall = []string{"install", "ambit", "deploy/charts/ambit", "-n", ReleaseNamespace, "--create-namespace", "--set", "hub=localhost:5000/ambit", "--wait", "--timeout", "5m"}
	// helm's --wait takes a DaemonSet with maxUnavailable 1 for ready with
	// one pod not ready yet: on a one-node cluster, with none.
	WaitMesh        = []string{"wait", "-n", ReleaseNamespace, "--for=condition=Ready", "pod", "--all", "--timeout=5m"}
	CreateNamespace = []string{"create", "namespace", AppNamespace}
	ApplyBookinfo   = []string{"apply", "-n", AppNamespace, "-f", "samples/bookinfo/bookinfo.yaml"}
	WaitBookinfo    = []string{"wait", "-n", AppNamespace, "--for=condition=Available", "deployment", "--all", "--timeout=5m"}
	LabelAmbient    = []string{"label", "namespace", AppNamespace, "istio.io/dataplane-mode=ambient"}
	ApplyPolicy     = []string{"apply", "-n", AppNamespace, "-f", "samples/bookinfo/ratings-policy.yaml"}
	HelmUninstall   = []string{"uninstall", "ambit", "-n", ReleaseNamespace, "--wait", "--timeout", "5m"}
)

// InstallSection returns the README's install commands as shell lines, in
// order.
func InstallSection() []string {
	line := func(prog string, args []string) string { return prog + " " + strings.Join(args, " ") }
	return []string{
		line("helm", HelmInstall),
		line("kubectl", WaitMesh),
		line("kubectl", CreateNamespace),
		line("kubectl", ApplyBookinfo),
		line("kubectl", WaitBookinfo),
		line("kubectl", LabelAmbient),
		line("kubectl", ApplyPolicy),
		line("helm", HelmUninstall),
	}
}
