package version

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildTags checks that every place that builds Ambit's binaries
// uses BuildTags, and that with them the servers do not link
// text/template (BuildTags says why that matters).
func TestBuildTags(t *testing.T) {
	root := filepath.Join("..", "..")
	for file, want := range map[string]string{
		"Makefile":                 "TAGS     := " + BuildTags + "\n",
		"deploy/images/images.go":  `const BuildTags = "` + BuildTags + `"`,
		"internal/lab/binaries.go": `"-tags", version.BuildTags,`,
	} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s: no %q", file, want)
		}
	}
	cmd := exec.Command("go", "list", "-tags", BuildTags, "-deps", "./waypoint/cmd/waypoint", "./ztunnel/cmd/ztunnel", "./istiod/cmd/istiod")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "text/template" || pkg == "golang.org/x/net/trace" {
			t.Errorf("the waypoint, ztunnel or istiod links %s with tags %q", pkg, BuildTags)
		}
	}
}
