package testutil

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// module is the main module's path.
const module = "github.com/ambitmesh/ambit"

// components are the top-level directories that hold Ambit's programs and
// their packages.
var components = []string{"bpf", "cni", "istiod", "waypoint", "ztunnel"}

// crossImports are the imports from one component's code into another's
// that the import rules allow, with the reason. Every other such import is
// refused: shared code lives in internal/ or api/.
var crossImports = map[[2]string]string{
	{"cni", "bpf"}: "the node agent loads, attaches and pins the redirection programs",
}

// cliImports are the components' packages that ambitctl (the command
// line, not a component) may import, code and tests, with the reason:
// the types and names of what it reads and writes, and the node checks
// its precheck shares with the node agent. Any other component package
// stays out of the CLI.
var cliImports = map[string]string{
	"ztunnel/admin":  "the config dump ztunnel-config decodes",
	"ztunnel/config": "the workload, service and policy types of that dump",
	"istiod/ambient": "the waypoint labels and annotations istiod reads",
	"istiod/gateway": "the waypoint GatewayClass",
	"cni/install":    "which conflist the agent chains into (precheck)",
	"bpf/redirect":   "the TCX probe the agent uses to pick its attach mode (precheck)",
}

// cliTestImports are the components' packages ambitctl's tests (only)
// may import, with the reason.
var cliTestImports = map[string]string{
	"waypoint/waypointtest": "proxy-config's tests read the config dump of the real waypoint, run in process on istiod's golden waypoint configuration",
}

// goPackage is what go list says about one package.
type goPackage struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// importViolations returns one line for every import of pkgs that breaks
// the import rules written down in docs/architecture.md ("Import rules"):
//
//   - a component's package is imported only by the same component, by
//     e2e/, by another component's tests (to test against the real peer,
//     as ztunnel's tests do against istiod's CA and xDS server), and by
//     another component's code where crossImports allows it; so nothing
//     under internal/, api/ or samples/ imports a component, and ztunnel
//     and the waypoint do not import each other, istiod or cni;
//   - ambitctl, the command line, imports of the components only the
//     packages cliImports lists;
//   - only e2e/ imports e2e/, tests included.
func importViolations(pkgs []goPackage) []string {
	var bad []string
	for _, p := range pkgs {
		from, ok := inModule(p.ImportPath)
		if !ok {
			continue
		}
		check := func(imports []string, test bool) {
			for _, imp := range imports {
				to, ok := inModule(imp)
				if !ok {
					continue
				}
				if msg := importRule(from, to, test); msg != "" {
					kind := "imports"
					if test {
						kind = "imports in its tests"
					}
					bad = append(bad, fmt.Sprintf("%s %s %s: %s", from, kind, to, msg))
				}
			}
		}
		check(p.Imports, false)
		check(slices.Concat(p.TestImports, p.XTestImports), true)
	}
	slices.Sort(bad)
	return slices.Compact(bad)
}

// importRule says why package from (a path in the module) may not import
// to, or returns "" when it may.
func importRule(from, to string, test bool) string {
	fromTop, toTop := topDir(from), topDir(to)
	if toTop == "e2e" && fromTop != "e2e" {
		return "only e2e/ imports e2e/ (its tooling runs the components)"
	}
	if !slices.Contains(components, toTop) || toTop == fromTop || fromTop == "e2e" {
		return ""
	}
	if fromTop == "ambitctl" {
		if _, ok := cliImports[to]; ok {
			return ""
		}
		if _, ok := cliTestImports[to]; ok && test {
			return ""
		}
		return fmt.Sprintf("ambitctl imports only the component packages cliImports lists, not %s", to)
	}
	if !slices.Contains(components, fromTop) {
		return fmt.Sprintf("%s/ is not a component and imports none (test tooling that needs components lives under e2e/)", fromTop)
	}
	if test {
		return ""
	}
	if _, ok := crossImports[[2]string{fromTop, toTop}]; ok {
		return ""
	}
	return fmt.Sprintf("component %s does not import component %s (shared code lives in internal/ or api/)", fromTop, toTop)
}

// inModule returns the path of an import path of the main module relative
// to the module's root.
func inModule(importPath string) (string, bool) {
	if importPath == module {
		return "", true
	}
	rel, ok := strings.CutPrefix(importPath, module+"/")
	return rel, ok
}

// topDir is the first element of a path relative to the module's root.
func topDir(rel string) string {
	top, _, _ := strings.Cut(rel, "/")
	return top
}

// listPackages runs go list on every package of the main module.
func listPackages(t *testing.T) []goPackage {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,TestImports,XTestImports", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list ./... in %s: %v\n%s", root, err, ee.Stderr)
		}
		t.Fatalf("go list ./... in %s: %v", root, err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestImportRules: the module's packages keep the import rules
// (importViolations; docs/architecture.md, "Import rules").
func TestImportRules(t *testing.T) {
	pkgs := listPackages(t)
	var checked []string
	for _, p := range pkgs {
		if rel, ok := inModule(p.ImportPath); ok {
			checked = append(checked, rel)
		}
	}
	for _, want := range []string{"internal/hbone", "ztunnel", "istiod/server", "cni/agent", "e2e"} {
		if !slices.Contains(checked, want) {
			t.Fatalf("go list ./...: got packages %v, want %s among them", checked, want)
		}
	}
	for _, v := range importViolations(pkgs) {
		t.Errorf("import rule broken: %s", v)
	}
}

// TestImportViolations: each rule refuses what it should and allows what
// it should, for code and for tests.
func TestImportViolations(t *testing.T) {
	m := func(rel string) string { return module + "/" + rel }
	pkgs := []goPackage{
		// Allowed.
		{ImportPath: m("ztunnel/inbound"), Imports: []string{m("ztunnel/config"), m("internal/hbone"), m("api/workload"), "net"}},
		{ImportPath: m("ztunnel/xds"), TestImports: []string{m("istiod/xds"), m("istiod/ca")}},
		{ImportPath: m("cni/agent"), Imports: []string{m("bpf/redirect")}},
		{ImportPath: m("e2e/internal/labmesh"), Imports: []string{m("ztunnel/admin"), m("istiod/ca"), m("internal/lab")}},
		{ImportPath: m("e2e"), TestImports: []string{m("e2e/internal/labmesh"), m("cni/agent")}},
		{ImportPath: m("samples/echo"), Imports: []string{m("internal/echo")}},
		{ImportPath: m("ambitctl/cli"), Imports: []string{m("ztunnel/admin"), m("istiod/ambient"), m("internal/version")}, TestImports: []string{m("bpf/redirect")}},
		{ImportPath: "example.com/other", Imports: []string{m("e2e/internal/labmesh")}},
		{ImportPath: module + "x/ztunnel", Imports: []string{m("istiod/xds")}},
		// Refused.
		{ImportPath: m("internal/labmesh"), Imports: []string{m("ztunnel/admin")}},
		{ImportPath: m("internal/lab"), XTestImports: []string{m("istiod/ca")}},
		{ImportPath: m("samples/bookinfo/deploy"), Imports: []string{m("cni/plugin")}},
		{ImportPath: m("ztunnel/caclient"), Imports: []string{m("istiod/ca")}},
		{ImportPath: m("ztunnel"), Imports: []string{m("waypoint"), m("cni/plugin")}},
		{ImportPath: m("waypoint"), Imports: []string{m("ztunnel/pool")}},
		{ImportPath: m("bpf/redirect"), Imports: []string{m("cni/agent")}},
		{ImportPath: m("istiod/server"), TestImports: []string{m("e2e/internal/labmesh")}},
		{ImportPath: m("internal/testutil"), Imports: []string{m("e2e/internal/bookinfo")}},
		{ImportPath: m("ambitctl/cli"), Imports: []string{m("ztunnel/inbound")}, TestImports: []string{m("e2e/internal/labmesh")}},
	}
	got := importViolations(pkgs)
	want := []string{
		"ambitctl/cli imports in its tests e2e/internal/labmesh: only e2e/ imports e2e/ (its tooling runs the components)",
		"ambitctl/cli imports ztunnel/inbound: ambitctl imports only the component packages cliImports lists, not ztunnel/inbound",
		"bpf/redirect imports cni/agent: component bpf does not import component cni (shared code lives in internal/ or api/)",
		"internal/lab imports in its tests istiod/ca: internal/ is not a component and imports none (test tooling that needs components lives under e2e/)",
		"internal/labmesh imports ztunnel/admin: internal/ is not a component and imports none (test tooling that needs components lives under e2e/)",
		"internal/testutil imports e2e/internal/bookinfo: only e2e/ imports e2e/ (its tooling runs the components)",
		"istiod/server imports in its tests e2e/internal/labmesh: only e2e/ imports e2e/ (its tooling runs the components)",
		"samples/bookinfo/deploy imports cni/plugin: samples/ is not a component and imports none (test tooling that needs components lives under e2e/)",
		"waypoint imports ztunnel/pool: component waypoint does not import component ztunnel (shared code lives in internal/ or api/)",
		"ztunnel imports cni/plugin: component ztunnel does not import component cni (shared code lives in internal/ or api/)",
		"ztunnel imports waypoint: component ztunnel does not import component waypoint (shared code lives in internal/ or api/)",
		"ztunnel/caclient imports istiod/ca: component ztunnel does not import component istiod (shared code lives in internal/ or api/)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("violations (-want +got):\n%s", diff)
	}
}
