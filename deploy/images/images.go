// Package images builds Ambit's container images offline and
// reproducibly: static Go binaries (CGO_ENABLED=0, -trimpath, no VCS stamp,
// empty build id) on a base made here from nothing but an /etc/passwd, with
// every timestamp fixed (SOURCE_DATE_EPOCH, else the Unix epoch), written as
// OCI image layouts and as tarballs that `ctr images import` and `docker
// load` read. The same source tree, Go toolchain and (for the node agent's
// iptables) Debian packages give the same bytes, so the same digests.
//
// Image names, registry and tag come from the Helm chart
// (deploy/charts/ambit: values.yaml's hub and each component's image, and
// Chart.yaml's appVersion), so the chart's defaults name exactly these
// images. It is a module of its own so that go-containerregistry stays out
// of Ambit's binaries.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.yaml.in/yaml/v3"
)

// Users of the images. istiod runs as Istio's proxy uid (the chart's
// runAsUser); ztunnel and the node agent run as root because they need
// capabilities, which Kubernetes grants to a non-root process only through
// file capabilities.
const (
	NonRootUID  = 1337
	nonRootUser = "ambit"
	// BinDir holds every image's Go binaries.
	BinDir = "/usr/local/bin"
	// Path is every image's PATH: the agent runs iptables from it.
	Path = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// Source is the org.opencontainers.image.source label.
	Source = "https://github.com/ambitmesh/ambit"
	// LabelIstioVersion names the Istio release whose wire format the
	// image speaks (api.IstioVersion), which ztunnel reports as
	// ISTIO_VERSION; the image's own version is Ambit's.
	LabelIstioVersion = "dev.ambit.istio-version"
)

// Component is one image: its Go binaries (main packages of the Ambit
// module), the first of which is the entrypoint.
type Component struct {
	// ValuesKey is the chart's values key whose .image names the image.
	ValuesKey string
	// Image names an image the chart does not deploy (ambitctl); used
	// when ValuesKey is empty.
	Image       string
	Packages    []string
	User        string
	Description string
	// IPTables adds the build machine's iptables (nft) with the shared
	// libraries and extensions it loads.
	IPTables bool
	// Files are files made elsewhere (programs built from other modules,
	// certificates) that the image holds besides Packages' binaries.
	Files []File
	// Entrypoint is the image's entrypoint when it is not the first of
	// Packages (an image of Files only).
	Entrypoint string
}

// File is a file of the build machine put into an image.
type File struct {
	// Path is the file's absolute path in the image, Source the file to
	// copy, Mode its permission bits.
	Path, Source string
	Mode         fs.FileMode
}

// Components are Ambit's images.
var Components = []Component{
	{
		ValuesKey:   "istiod",
		Packages:    []string{"./istiod/cmd/istiod"},
		User:        fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
		Description: "Ambit istiod: workload discovery (delta xDS) and the mesh CA",
	},
	{
		ValuesKey:   "ztunnel",
		Packages:    []string{"./ztunnel/cmd/ztunnel"},
		User:        "0:0",
		Description: "Ambit ztunnel: the node tunnel (HBONE)",
	},
	{
		ValuesKey:   "cni",
		Packages:    []string{"./cni/cmd/ambit-cni-agent", "./cni/cmd/ambit-cni"},
		User:        "0:0",
		Description: "Ambit node agent, with the chained CNI plugin ambit-cni it installs on the node",
		IPTables:    true,
	},
	{
		ValuesKey:   "waypoint",
		Packages:    []string{"./waypoint/cmd/waypoint"},
		User:        fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
		Description: "Ambit waypoint: the L7 proxy istiod deploys per waypoint Gateway (Envoy xDS, HBONE in and out)",
	},
	{
		// The command line, for jobs and for running x precheck on a
		// node (as root, with the host's /etc/cni/net.d and /sys).
		Image:       "ambitctl",
		Packages:    []string{"./ambitctl/cmd/ambitctl"},
		User:        fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
		Description: "ambitctl: Ambit's command line (waypoints, ztunnel-config, version, precheck)",
	},
}

// Options of Build.
type Options struct {
	// Root is the Ambit source tree.
	Root string
	// Out receives <image>/ (an OCI layout) and <image>.tar per image.
	Out string
	// Version tags the images; the chart's appVersion when empty.
	Version string
	// Hub is the registry part of the names; the chart's hub when empty.
	Hub string
	// Epoch is every timestamp in the images.
	Epoch time.Time
	// Arch is the images' GOARCH; runtime.GOARCH when empty. The node
	// agent's iptables is the build machine's, so it must match.
	Arch string
	// Go is the go command; "go" when empty.
	Go string
}

// Image is one image built.
type Image struct {
	Name   string // the chart's image name, e.g. ambit-cni
	Ref    string // <hub>/<name>:<version>
	Digest v1.Hash
	Layout string // OCI layout directory
	Tar    string // tarball
	Config *v1.ConfigFile
}

// EpochFromEnv is SOURCE_DATE_EPOCH (seconds) when set, else the Unix epoch.
func EpochFromEnv() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse SOURCE_DATE_EPOCH %q: want seconds since the epoch: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Build builds every image of Components.
func Build(ctx context.Context, o Options) ([]Image, error) {
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	chart, err := ReadChart(filepath.Join(o.Root, "deploy", "charts", "ambit"))
	if err != nil {
		return nil, err
	}
	if o.Version == "" {
		o.Version = chart.AppVersion
	}
	if o.Hub == "" {
		o.Hub = chart.Hub
	}
	istio, err := istioVersion(filepath.Join(o.Root, "api", "istio.go"))
	if err != nil {
		return nil, err
	}
	bin, err := os.MkdirTemp("", "ambit-images-bin-")
	if err != nil {
		return nil, fmt.Errorf("create binary dir: %w", err)
	}
	defer os.RemoveAll(bin)
	var pkgs []string
	for _, c := range Components {
		pkgs = append(pkgs, c.Packages...)
	}
	if err := goBuild(ctx, o, bin, pkgs); err != nil {
		return nil, err
	}
	base, err := baseLayer(o.Epoch)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", o.Out, err)
	}
	var out []Image
	for _, c := range Components {
		imageName := c.Image
		if c.ValuesKey != "" {
			imageName = chart.Images[c.ValuesKey]
			if imageName == "" {
				return nil, fmt.Errorf("read chart: values.yaml has no %s.image", c.ValuesKey)
			}
		}
		im, err := buildOne(o, c, imageName, istio, bin, base)
		if err != nil {
			return nil, fmt.Errorf("build image %s: %w", imageName, err)
		}
		out = append(out, im)
	}
	return out, nil
}

// BuildProgram builds one image of Go main packages of the Ambit module
// (the first is the entrypoint) with the same builder and base as
// Components, named <o.Hub>/<imageName>:<o.Version>: for the lab's own
// images (the real node's pause image, test workloads). Hub and Version
// must be set.
func BuildProgram(ctx context.Context, o Options, imageName string, c Component) (Image, error) {
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Hub == "" || o.Version == "" || imageName == "" || len(c.Packages)+len(c.Files) == 0 {
		return Image{}, fmt.Errorf("build image %q: want a hub, a version, a name and packages or files", imageName)
	}
	if len(c.Packages) == 0 && c.Entrypoint == "" {
		return Image{}, fmt.Errorf("build image %q: want an entrypoint for an image of files only", imageName)
	}
	istio, err := istioVersion(filepath.Join(o.Root, "api", "istio.go"))
	if err != nil {
		return Image{}, err
	}
	bin, err := os.MkdirTemp("", "ambit-images-bin-")
	if err != nil {
		return Image{}, fmt.Errorf("create binary dir: %w", err)
	}
	defer os.RemoveAll(bin)
	if len(c.Packages) > 0 {
		if err := goBuild(ctx, o, bin, c.Packages); err != nil {
			return Image{}, err
		}
	}
	base, err := baseLayer(o.Epoch)
	if err != nil {
		return Image{}, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return Image{}, fmt.Errorf("create %s: %w", o.Out, err)
	}
	im, err := buildOne(o, c, imageName, istio, bin, base)
	if err != nil {
		return Image{}, fmt.Errorf("build image %s: %w", imageName, err)
	}
	return im, nil
}

// Chart is what the images take from the Helm chart.
type Chart struct {
	AppVersion string
	Hub        string
	// Images maps a values key (istiod, ztunnel, cni) to its image name.
	Images map[string]string
}

// ReadChart reads the chart's appVersion, hub and image names.
func ReadChart(dir string) (Chart, error) {
	var meta struct {
		AppVersion string `yaml:"appVersion"`
	}
	if err := readYAML(filepath.Join(dir, "Chart.yaml"), &meta); err != nil {
		return Chart{}, err
	}
	var values map[string]any
	if err := readYAML(filepath.Join(dir, "values.yaml"), &values); err != nil {
		return Chart{}, err
	}
	c := Chart{AppVersion: meta.AppVersion, Images: map[string]string{}}
	c.Hub, _ = values["hub"].(string)
	for k, v := range values {
		if m, ok := v.(map[string]any); ok {
			if s, ok := m["image"].(string); ok {
				c.Images[k] = s
			}
		}
	}
	if c.AppVersion == "" || c.Hub == "" {
		return Chart{}, fmt.Errorf("read chart %s: want appVersion in Chart.yaml and hub in values.yaml", dir)
	}
	return c, nil
}

func readYAML(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read chart: %w", err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", file, err)
	}
	return nil
}

// istioVersion reads the constant IstioVersion of api/istio.go.
func istioVersion(file string) (string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", file, err)
	}
	var v string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "IstioVersion" || len(vs.Values) != 1 {
			return true
		}
		if lit, ok := vs.Values[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			v, _ = strconv.Unquote(lit.Value)
		}
		return false
	})
	if v == "" {
		return "", fmt.Errorf("parse %s: no string constant IstioVersion", file)
	}
	return v, nil
}

// VersionVar is the linker variable that holds a binary's version
// (internal/version), stamped with the images' tag.
const VersionVar = "github.com/ambitmesh/ambit/internal/version.version"

// BuildTags are the build tags of every binary: Ambit's
// internal/version.BuildTags (this module cannot import it; the main
// module's TestBuildTags checks that the two agree).
const BuildTags = "grpcnotrace"

// goBuild builds static, reproducible binaries: no cgo, no file system
// paths (-trimpath), no VCS stamp (a dirty tree would differ from a clean
// one with the same files), an empty build id, no symbol table or DWARF
// (stack traces keep function names); the version stamped is the
// images' tag.
func goBuild(ctx context.Context, o Options, dir string, pkgs []string) error {
	if strings.ContainsAny(o.Version, " '\"\t\n") {
		return fmt.Errorf("go build: version %q: want no spaces or quotes", o.Version)
	}
	ldflags := "-ldflags=-s -w -buildid= -X " + VersionVar + "=" + o.Version
	args := append([]string{"build", "-tags", BuildTags, "-trimpath", "-buildvcs=false", ldflags, "-o", dir + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, o.Go, args...)
	cmd.Dir = o.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch, "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

func buildOne(o Options, c Component, imageName, istio, bin string, base v1.Layer) (Image, error) {
	ref := fmt.Sprintf("%s/%s:%s", o.Hub, imageName, o.Version)
	tag, err := name.NewTag(ref)
	if err != nil {
		return Image{}, fmt.Errorf("parse reference %s: %w", ref, err)
	}
	files := newTree()
	var entrypoint string
	for i, p := range c.Packages {
		exe := path.Base(p)
		b, err := os.ReadFile(filepath.Join(bin, exe))
		if err != nil {
			return Image{}, fmt.Errorf("read binary: %w", err)
		}
		files.file(path.Join(BinDir, exe), b, 0o755)
		if i == 0 {
			entrypoint = path.Join(BinDir, exe)
		}
	}
	for _, f := range c.Files {
		if !path.IsAbs(f.Path) {
			return Image{}, fmt.Errorf("add %s: want an absolute path in the image", f.Path)
		}
		b, err := os.ReadFile(f.Source)
		if err != nil {
			return Image{}, fmt.Errorf("add %s: %w", f.Path, err)
		}
		files.file(path.Clean(f.Path), b, f.Mode)
	}
	if c.Entrypoint != "" {
		entrypoint = c.Entrypoint
	}
	if c.IPTables {
		if err := addIPTables(files, o.Arch); err != nil {
			return Image{}, err
		}
	}
	app, err := files.layer(o.Epoch)
	if err != nil {
		return Image{}, err
	}
	hist := v1.History{Created: v1.Time{Time: o.Epoch}, CreatedBy: "ambit deploy/images"}
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: base, History: hist, MediaType: types.OCILayer},
		mutate.Addendum{Layer: app, History: hist, MediaType: types.OCILayer})
	if err != nil {
		return Image{}, fmt.Errorf("append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = o.Arch
	cf.OS = "linux"
	cf.Created = v1.Time{Time: o.Epoch}
	cf.Config = v1.Config{
		Entrypoint: []string{entrypoint},
		User:       c.User,
		Env:        []string{"PATH=" + Path},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":       imageName,
			"org.opencontainers.image.description": c.Description,
			"org.opencontainers.image.version":     o.Version,
			"org.opencontainers.image.source":      Source,
			"org.opencontainers.image.created":     o.Epoch.Format(time.RFC3339),
			LabelIstioVersion:                      istio,
		},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return Image{}, fmt.Errorf("set config: %w", err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	digest, err := img.Digest()
	if err != nil {
		return Image{}, fmt.Errorf("digest: %w", err)
	}
	im := Image{Name: imageName, Ref: ref, Digest: digest, Config: cf,
		Layout: filepath.Join(o.Out, imageName), Tar: filepath.Join(o.Out, imageName+".tar")}
	if err := os.RemoveAll(im.Layout); err != nil {
		return Image{}, fmt.Errorf("remove old layout: %w", err)
	}
	lp, err := layout.Write(im.Layout, empty.Index)
	if err != nil {
		return Image{}, fmt.Errorf("write layout %s: %w", im.Layout, err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref,
		"io.containerd.image.name":          ref,
	})); err != nil {
		return Image{}, fmt.Errorf("write layout %s: %w", im.Layout, err)
	}
	if err := tarball.WriteToFile(im.Tar, tag, img); err != nil {
		return Image{}, fmt.Errorf("write %s: %w", im.Tar, err)
	}
	return im, nil
}

// baseLayer is every image's base: root and a non-root user, their
// groups, /tmp. No shell, no package manager, no CA certificates (Ambit's
// components trust only the cluster's and the mesh's own CAs, given at run
// time).
func baseLayer(epoch time.Time) (v1.Layer, error) {
	t := newTree()
	t.file("/etc/passwd", fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/home/%s:/sbin/nologin\n", nonRootUser, NonRootUID, NonRootUID, nonRootUser, nonRootUser), 0o644)
	t.file("/etc/group", fmt.Appendf(nil, "root:x:0:\n%s:x:%d:\n", nonRootUser, NonRootUID), 0o644)
	t.dir("/root", 0o700, 0)
	t.dir("/home/"+nonRootUser, 0o700, NonRootUID)
	t.dir("/tmp", 0o777|fs.ModeSticky, 0)
	return t.layer(epoch)
}

// tree is a layer's content, written in name order so that the same
// files give the same tar bytes.
type tree struct {
	entries map[string]*tar.Header
	data    map[string][]byte
}

func newTree() *tree { return &tree{entries: map[string]*tar.Header{}, data: map[string][]byte{}} }

func (t *tree) parents(p string) {
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := t.entries[d]; !ok {
			t.dir(d, 0o755, 0)
		}
	}
}

func (t *tree) dir(p string, mode fs.FileMode, uid int) {
	t.parents(p)
	m := int64(mode.Perm())
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	t.entries[p] = &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: m, Uid: uid, Gid: uid}
}

func (t *tree) file(p string, b []byte, mode fs.FileMode) {
	t.parents(p)
	t.entries[p] = &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: int64(mode.Perm()), Size: int64(len(b))}
	t.data[p] = b
}

func (t *tree) symlink(p, target string) {
	t.parents(p)
	t.entries[p] = &tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(p, "/"), Linkname: target, Mode: 0o777}
}

func (t *tree) layer(epoch time.Time) (v1.Layer, error) {
	names := make([]string, 0, len(t.entries))
	for n := range t.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := *t.entries[n]
		h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
		if _, err := tw.Write(t.data[n]); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// addIPTables adds the build machine's iptables-nft (the agent adds one
// NOTRACK rule with it), the xtables extensions it loads and every shared
// library they need, with the symlinks on the way to each, at the
// machine's paths. nftables needs only CAP_NET_ADMIN; it works whether the
// node's other rules are iptables-legacy or nft.
func addIPTables(t *tree, arch string) error {
	if arch != runtime.GOARCH {
		return fmt.Errorf("add iptables: the build machine's iptables is %s, the image %s", runtime.GOARCH, arch)
	}
	triple, ok := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[arch]
	if !ok {
		return fmt.Errorf("add iptables: no Debian multiarch triple for %s", arch)
	}
	const multi = "/usr/sbin/xtables-nft-multi"
	libdirs := []string{"/lib/" + triple, "/usr/lib/" + triple, "/lib", "/usr/lib"}
	ext := "/usr/lib/" + triple + "/xtables"
	todo := []string{multi}
	entries, err := os.ReadDir(ext)
	if err != nil {
		return fmt.Errorf("add iptables: %w (apt-get install iptables)", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".so") {
			todo = append(todo, path.Join(ext, e.Name()))
		}
	}
	seen := map[string]bool{}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		real, err := t.hostFile(p)
		if err != nil {
			return fmt.Errorf("add iptables: %w", err)
		}
		deps, err := elfDeps(real, libdirs)
		if err != nil {
			return fmt.Errorf("add iptables: %w", err)
		}
		todo = append(todo, deps...)
	}
	for _, n := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		t.symlink("/usr/sbin/"+n, "xtables-nft-multi")
	}
	return nil
}

// hostFile copies a file of the build machine into the tree at the same
// path, recreating each symlink on the way, and returns its real path.
func (t *tree) hostFile(p string) (string, error) {
	for range 40 {
		cur := "/"
		parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		redirected := false
		for i, part := range parts {
			next := path.Join(cur, part)
			fi, err := os.Lstat(next)
			if err != nil {
				return "", err
			}
			if fi.Mode()&fs.ModeSymlink != 0 {
				target, err := os.Readlink(next)
				if err != nil {
					return "", err
				}
				t.symlink(next, target)
				if !path.IsAbs(target) {
					target = path.Join(cur, target)
				}
				p = path.Join(append([]string{target}, parts[i+1:]...)...)
				redirected = true
				break
			}
			cur = next
		}
		if redirected {
			continue
		}
		fi, err := os.Stat(cur)
		if err != nil {
			return "", err
		}
		b, err := os.ReadFile(cur)
		if err != nil {
			return "", err
		}
		t.file(cur, b, fi.Mode().Perm())
		return cur, nil
	}
	return "", fmt.Errorf("resolve %s: too many symlinks", p)
}

// elfDeps returns the interpreter and the libraries an ELF file needs, as
// paths of the build machine.
func elfDeps(file string, libdirs []string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read ELF %s: %w", file, err)
	}
	defer f.Close()
	var deps []string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return nil, fmt.Errorf("read interpreter of %s: %w", file, err)
			}
			deps = append(deps, strings.TrimRight(string(b), "\x00"))
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("read libraries of %s: %w", file, err)
	}
next:
	for _, l := range libs {
		for _, d := range libdirs {
			if _, err := os.Stat(path.Join(d, l)); err == nil {
				deps = append(deps, path.Join(d, l))
				continue next
			}
		}
		return nil, fmt.Errorf("find %s, needed by %s: %w", l, file, fs.ErrNotExist)
	}
	return deps, nil
}
