package realnode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/internal/lab"
)

// TestREADME: the README's install section shows the commands TestInstall
// runs, in that order.
func TestREADME(t *testing.T) {
	root, err := lab.FindRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	_, section, ok := strings.Cut(readme, "## Installing on a real cluster")
	if !ok {
		t.Fatal(`README.md: no "## Installing on a real cluster" section`)
	}
	if next := strings.Index(section, "\n## "); next >= 0 {
		section = section[:next]
	}
	at := 0
	for _, cmd := range InstallSection() {
		i := strings.Index(section[at:], cmd+"\n")
		if i < 0 {
			t.Errorf("README's install section: no line %q after the previous command; want the commands TestInstall runs, in order", cmd)
			continue
		}
		at += i + len(cmd)
	}
}
