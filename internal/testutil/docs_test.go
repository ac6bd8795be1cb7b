package testutil

import (
	"errors"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPackageDocs fails for any package of the module without a package
// doc comment: each package says what it is for.
func TestPackageDocs(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root %s: %v", root, err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata") {
			return filepath.SkipDir
		}
		if path != root {
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir // a module of its own
			}
		}
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		documented := map[string]bool{} // package name -> has a doc comment
		for _, e := range entries {
			if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(path, e.Name()), nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				return err
			}
			has := f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != ""
			documented[f.Name.Name] = documented[f.Name.Name] || has
		}
		for pname, ok := range documented {
			checked++
			if !ok {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("package %s in %s: no package doc comment, want one that says what it is for", pname, rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("checked no packages: got 0, want the module's packages")
	}
}

// TestPackageMap: docs/architecture.md's package map has a row for every
// package of the module, and every path it names is a directory of the
// repository.
func TestPackageMap(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := packageMap(string(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range listPackages(t) {
		rel, ok := inModule(p.ImportPath)
		if ok && !slices.Contains(mapped, rel) {
			t.Errorf("package %s: no row in docs/architecture.md's package map, want one that says what it does and who may import it", rel)
		}
	}
	for _, rel := range mapped {
		if fi, err := os.Stat(filepath.Join(root, rel)); err != nil || !fi.IsDir() {
			t.Errorf("docs/architecture.md's package map names %s: got no such directory, want the rows to follow the code", rel)
		}
	}
}

// packageMap returns the package paths in the first column of the table
// under the "## Package map" heading of doc.
func packageMap(doc string) ([]string, error) {
	_, section, ok := strings.Cut(doc, "\n## Package map\n")
	if !ok {
		return nil, errors.New(`find package map: no "## Package map" heading`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var paths []string
	for line := range strings.Lines(section) {
		cells := strings.Split(line, "|")
		if len(cells) < 3 || !strings.HasPrefix(line, "| `") {
			continue
		}
		for _, cell := range strings.Split(cells[1], ",") {
			cell = strings.TrimSpace(cell)
			if p, ok := strings.CutPrefix(cell, "`"); ok && strings.HasSuffix(p, "`") {
				paths = append(paths, strings.TrimSuffix(p, "`"))
			}
		}
	}
	if len(paths) == 0 {
		return nil, errors.New("find package map: no rows under the heading")
	}
	return paths, nil
}
