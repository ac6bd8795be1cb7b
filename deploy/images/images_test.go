package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const root = "../.."

// TestReproducible builds every image twice, into two directories, and
// wants the same digests and the same bytes in every file written; then
// checks each image's reference, configuration and content.
func TestReproducible(t *testing.T) {
	ctx := context.Background()
	epoch := time.Unix(1700000000, 0).UTC()
	build := func() (string, []Image) {
		out := t.TempDir()
		ims, err := Build(ctx, Options{Root: root, Out: out, Epoch: epoch})
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		return out, ims
	}
	out1, first := build()
	out2, second := build()
	if len(first) != len(Components) || len(second) != len(Components) {
		t.Fatalf("got %d and %d images, want %d", len(first), len(second), len(Components))
	}
	for i := range first {
		if first[i].Digest != second[i].Digest {
			t.Errorf("%s: got digests %s and %s, want the same", first[i].Ref, first[i].Digest, second[i].Digest)
		}
	}
	sums1, sums2 := fileSums(t, out1), fileSums(t, out2)
	if len(sums1) == 0 {
		t.Fatal("no files written")
	}
	for f, s := range sums1 {
		if sums2[f] != s {
			t.Errorf("%s differs between the two builds", f)
		}
	}
	if len(sums1) != len(sums2) {
		t.Errorf("got %d and %d files, want the same", len(sums1), len(sums2))
	}

	chart, err := ReadChart(filepath.Join(root, "deploy", "charts", "ambit"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		ref, user  string
		entrypoint string
		also       []string
	}{
		"istiod":    {ref: chart.Hub + "/istiod:" + chart.AppVersion, user: "1337:1337", entrypoint: "/usr/local/bin/istiod"},
		"ztunnel":   {ref: chart.Hub + "/ztunnel:" + chart.AppVersion, user: "0:0", entrypoint: "/usr/local/bin/ztunnel"},
		"ambit-cni": {ref: chart.Hub + "/ambit-cni:" + chart.AppVersion, user: "0:0", entrypoint: "/usr/local/bin/ambit-cni-agent", also: []string{"/usr/local/bin/ambit-cni", "/usr/sbin/iptables"}},
		"ambitctl":  {ref: chart.Hub + "/ambitctl:" + chart.AppVersion, user: "1337:1337", entrypoint: "/usr/local/bin/ambitctl"},
		"waypoint":  {ref: chart.Hub + "/waypoint:" + chart.AppVersion, user: "1337:1337", entrypoint: "/usr/local/bin/waypoint"},
	}
	for _, im := range first {
		t.Run(im.Name, func(t *testing.T) {
			w, ok := want[im.Name]
			if !ok {
				t.Fatalf("unexpected image %s", im.Name)
			}
			if im.Ref != w.ref {
				t.Errorf("got reference %s, want %s (the chart's defaults)", im.Ref, w.ref)
			}
			// Read back what was written, from the layout and the tarball.
			lp, err := layout.FromPath(im.Layout)
			if err != nil {
				t.Fatalf("read layout: %v", err)
			}
			img, err := lp.Image(im.Digest)
			if err != nil {
				t.Fatalf("read image %s from layout: %v", im.Digest, err)
			}
			timg, err := tarball.ImageFromPath(im.Tar, nil)
			if err != nil {
				t.Fatalf("read tarball: %v", err)
			}
			// The tarball (docker save's format) keeps the config and the
			// layers; its manifest is made again when it is read.
			tc, err := timg.ConfigName()
			if err != nil {
				t.Fatalf("read tarball config: %v", err)
			}
			if lc, _ := img.ConfigName(); tc != lc {
				t.Errorf("tarball: got config %s, want %s", tc, lc)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatalf("read config: %v", err)
			}
			c := cf.Config
			if got := strings.Join(c.Entrypoint, " "); got != w.entrypoint {
				t.Errorf("got entrypoint %q, want %q", got, w.entrypoint)
			}
			if c.User != w.user {
				t.Errorf("got user %q, want %q", c.User, w.user)
			}
			if cf.OS != "linux" || !cf.Created.Time.Equal(epoch) {
				t.Errorf("got os %q created %v, want linux, %v", cf.OS, cf.Created.Time, epoch)
			}
			for k, v := range map[string]string{
				"org.opencontainers.image.version": chart.AppVersion,
				"org.opencontainers.image.title":   im.Name,
				"org.opencontainers.image.source":  Source,
				LabelIstioVersion:                  "1.31.4",
			} {
				if c.Labels[k] != v {
					t.Errorf("label %s: got %q, want %q", k, c.Labels[k], v)
				}
			}
			dir := t.TempDir()
			extract(t, mutate.Extract(img), dir, epoch)
			for _, f := range append([]string{w.entrypoint}, w.also...) {
				fi, err := os.Stat(filepath.Join(dir, f))
				if err != nil || fi.Mode()&0o111 == 0 {
					t.Errorf("%s: got %v, %v, want an executable", f, fi, err)
				}
			}
			for _, f := range []string{w.entrypoint, "/usr/local/bin/ambit-cni"} {
				if f == "/usr/local/bin/ambit-cni" && im.Name != "ambit-cni" {
					continue
				}
				if static, err := isStatic(filepath.Join(dir, f)); err != nil || !static {
					t.Errorf("%s: got static %v (%v), want a static binary", f, static, err)
				}
			}
			passwd, err := os.ReadFile(filepath.Join(dir, "etc", "passwd"))
			if err != nil || !strings.Contains(string(passwd), ":1337:1337:") {
				t.Errorf("/etc/passwd: got %q (%v), want a user 1337", passwd, err)
			}
			if im.Name == "ambit-cni" {
				runIPTables(t, dir)
			}
			if im.Name == "ambitctl" {
				// The binary runs on its own and says the version it was
				// stamped with: the images' tag.
				out, err := exec.Command(filepath.Join(dir, w.entrypoint), "version", "--remote=false", "-o", "json").Output()
				if err != nil || !strings.Contains(string(out), `"version": "`+chart.AppVersion+`"`) {
					t.Errorf("ambitctl version: got %s (%v), want version %s", out, err, chart.AppVersion)
				}
			}
		})
	}
}

// runIPTables runs the image's iptables in a chroot of its file system:
// its loader, libraries and the extensions of the agent's NOTRACK rule
// load (help only: nothing touches the kernel's rules).
func runIPTables(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("running the image's iptables needs root (chroot), and CI runs as root")
		}
		t.Skip("running the image's iptables needs root (chroot)")
	}
	for _, args := range [][]string{
		{"-V"},
		{"-t", "raw", "-m", "mark", "-m", "comment", "-j", "NOTRACK", "--help"},
	} {
		cmd := exec.Command("/usr/sbin/iptables", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: dir}
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=" + Path}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("iptables %v in the image: %v\n%s", args, err, out)
		}
		if args[0] == "-V" && !strings.Contains(string(out), "nf_tables") {
			t.Errorf("iptables -V: got %q, want the nf_tables variant", out)
		}
		if args[0] != "-V" {
			for _, want := range []string{"mark match options", "comment match options"} {
				if !bytes.Contains(out, []byte(want)) {
					t.Errorf("iptables %v: got no %q in\n%s", args, want, out)
				}
			}
		}
	}
}

func fileSums(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sums[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return sums
}

// extract writes an image's flattened file system into dir, checking that
// every entry has the fixed timestamp.
func extract(t *testing.T, rc io.ReadCloser, dir string, epoch time.Time) {
	t.Helper()
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("read image: %v", err)
		}
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s: got mtime %v, want %v", h.Name, h.ModTime, epoch)
		}
		p := filepath.Join(dir, path.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Symlink(h.Linkname, p)
			}
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				var f *os.File
				if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY, fs.FileMode(h.Mode).Perm()); err == nil {
					_, err = io.Copy(f, tr)
					err = errors.Join(err, f.Close())
				}
			}
		}
		if err != nil {
			t.Fatalf("extract %s: %v", h.Name, err)
		}
	}
}

func isStatic(file string) (bool, error) {
	f, err := elf.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	libs, err := f.ImportedLibraries()
	return len(libs) == 0, err
}

func TestReadChartErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadChart(dir); err == nil {
		t.Error("ReadChart of an empty directory: got no error, want one")
	}
	os.WriteFile(filepath.Join(dir, "Chart.yaml"), []byte("appVersion: 1.0.0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "values.yaml"), []byte("tag: x\n"), 0o644)
	if _, err := ReadChart(dir); err == nil || !strings.Contains(err.Error(), "hub") {
		t.Errorf("ReadChart without hub: got %v, want an error naming hub", err)
	}
}

func TestEpochFromEnv(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if got, err := EpochFromEnv(); err != nil || got.Unix() != 0 {
		t.Errorf("unset: got %v, %v, want the Unix epoch", got, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if got, err := EpochFromEnv(); err != nil || got.Unix() != 1700000000 {
		t.Errorf("1700000000: got %v, %v", got, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := EpochFromEnv(); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("yesterday: got %v, want an error naming SOURCE_DATE_EPOCH", err)
	}
}

func TestBuildProgram(t *testing.T) {
	root := filepath.Join("..", "..")
	o := Options{Root: root, Out: t.TempDir(), Hub: "localhost:5000/ambit", Version: "lab"}
	c := Component{Packages: []string{"./internal/lab/cmd/pause"}, User: "0:0", Description: "pause"}
	im, err := BuildProgram(t.Context(), o, "pause", c)
	if err != nil {
		t.Fatal(err)
	}
	if want := "localhost:5000/ambit/pause:lab"; im.Ref != want {
		t.Errorf("ref: got %s, want %s", im.Ref, want)
	}
	if got, want := im.Config.Config.Entrypoint, []string{BinDir + "/pause"}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("entrypoint: got %v, want %v", got, want)
	}
	for _, bad := range []struct {
		name string
		o    Options
		c    Component
	}{
		{"", o, c},
		{"pause", Options{Root: root, Out: o.Out, Version: "lab"}, c},
		{"pause", Options{Root: root, Out: o.Out, Hub: "h"}, c},
		{"pause", o, Component{}},
	} {
		if _, err := BuildProgram(t.Context(), bad.o, bad.name, bad.c); err == nil {
			t.Errorf("BuildProgram(%q, hub %q, version %q, %d packages): got no error, want one", bad.name, bad.o.Hub, bad.o.Version, len(bad.c.Packages))
		}
	}
}

// TestBuildFiles builds an image of files made elsewhere (as the lab's
// conformance echo image is: Istio's programs and certificates) and reads
// them back from the layout with their modes.
func TestBuildFiles(t *testing.T) {
	root := filepath.Join("..", "..")
	src := t.TempDir()
	prog, cert := filepath.Join(src, "server"), filepath.Join(src, "cert.pem")
	os.WriteFile(prog, []byte("#!/bin/false\n"), 0o755)
	os.WriteFile(cert, []byte("certificate\n"), 0o644)
	o := Options{Root: root, Out: t.TempDir(), Hub: "registry.example/echo", Version: "v1"}
	c := Component{User: "1338:1338", Entrypoint: BinDir + "/server", Files: []File{
		{Path: BinDir + "/server", Source: prog, Mode: 0o755},
		{Path: "/cert.crt", Source: cert, Mode: 0o644},
	}}
	im, err := BuildProgram(t.Context(), o, "app", c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := im.Config.Config.Entrypoint, []string{BinDir + "/server"}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("entrypoint: got %v, want %v", got, want)
	}
	p, err := layout.FromPath(im.Layout)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Image(im.Digest)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	extract(t, mutate.Extract(img), dir, time.Unix(0, 0).UTC())
	for _, f := range []struct {
		path, data string
		mode       fs.FileMode
	}{
		{BinDir + "/server", "#!/bin/false\n", 0o755},
		{"/cert.crt", "certificate\n", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(dir, f.path))
		if err != nil {
			t.Errorf("%s in the image: %v", f.path, err)
			continue
		}
		if data, _ := os.ReadFile(filepath.Join(dir, f.path)); string(data) != f.data || fi.Mode().Perm() != f.mode {
			t.Errorf("%s in the image: got %q mode %v, want %q mode %v", f.path, data, fi.Mode().Perm(), f.data, f.mode)
		}
	}

	for _, bad := range []Component{
		{Files: c.Files},
		{Entrypoint: "/x", Files: []File{{Path: "relative", Source: prog, Mode: 0o755}}},
		{Entrypoint: "/x", Files: []File{{Path: "/missing", Source: filepath.Join(src, "missing"), Mode: 0o644}}},
	} {
		if _, err := BuildProgram(t.Context(), o, "app", bad); err == nil {
			t.Errorf("BuildProgram(%+v): got no error, want one", bad)
		}
	}
}
