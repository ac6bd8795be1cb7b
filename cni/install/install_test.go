package install

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fsnotify/fsnotify"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var entry = map[string]any{"type": PluginType, "agent_socket": "/var/run/ambit/cni.sock", "kubeconfig": "/etc/cni/net.d/ambit-kubeconfig"}

func copyToTemp(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInsertGolden: inserting and removing Ambit's entry, against golden
// files; removing restores every other plugin as it was.
func TestInsertGolden(t *testing.T) {
	for _, name := range []string{"bridge.conflist", "already-chained.conflist"} {
		t.Run(name, func(t *testing.T) {
			p := copyToTemp(t, name)
			changed, err := Insert(p, entry)
			if err != nil {
				t.Fatal(err)
			}
			if !changed {
				t.Error("first insert: got unchanged, want changed")
			}
			got, _ := os.ReadFile(p)
			golden := filepath.Join("testdata", strings.TrimSuffix(name, ".conflist")+".inserted.golden")
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("after insert (-want +got):\n%s", d)
			}
			if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
				t.Errorf("mode after insert: got %v, want 0640", fi.Mode().Perm())
			}
			if changed, err := Insert(p, entry); err != nil || changed {
				t.Errorf("second insert: got changed=%v err=%v, want unchanged", changed, err)
			}
			if has, err := Has(p); err != nil || !has {
				t.Errorf("Has after insert: got %v %v, want true", has, err)
			}
			if _, err := Remove(p); err != nil {
				t.Fatal(err)
			}
			got, _ = os.ReadFile(p)
			golden = filepath.Join("testdata", strings.TrimSuffix(name, ".conflist")+".removed.golden")
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, err = os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("after remove (-want +got):\n%s", d)
			}
			// Other plugins' entries come back byte for byte; only an
			// earlier Ambit entry is gone.
			if name == "bridge.conflist" {
				orig, _ := os.ReadFile(filepath.Join("testdata", name))
				if d := cmp.Diff(string(orig), string(got)); d != "" {
					t.Errorf("after insert and remove: got a file other than the original (-want +got):\n%s", d)
				}
			}
			if strings.Contains(string(got), PluginType) {
				t.Errorf("after remove: %s still in the file", PluginType)
			}
		})
	}
}

// TestInsertRefusesMalformed: a file that is not a usable conflist gets a
// clear error and is left byte for byte as it was.
func TestInsertRefusesMalformed(t *testing.T) {
	tests := map[string]string{
		"bad-truncated.conflist":      "unexpected end of JSON",
		"bad-no-plugins.conflist":     "empty plugins",
		"bad-single-conf.conflist":    `no "plugins"`,
		"bad-untyped-plugin.conflist": "plugin 0 has no type",
	}
	for name, wantErr := range tests {
		t.Run(name, func(t *testing.T) {
			p := copyToTemp(t, name)
			before, _ := os.ReadFile(p)
			_, err := Insert(p, entry)
			if err == nil || !strings.Contains(err.Error(), wantErr) || !strings.Contains(err.Error(), p) {
				t.Errorf("insert: got error %v, want one naming %s and saying %q", err, p, wantErr)
			}
			after, _ := os.ReadFile(p)
			if string(before) != string(after) {
				t.Errorf("malformed file changed:\nbefore %q\nafter  %q", before, after)
			}
		})
	}
}

// TestKeepPutsEntryBack: when the primary CNI rewrites its conflist without
// Ambit's entry, Keep puts it back.
func TestKeepPutsEntryBack(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "10-bridge.conflist")
	orig, err := os.ReadFile("testdata/bridge.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Keep(ctx, dir, entry, slog.New(slog.DiscardHandler), func() { close(ready) }) }()
	t.Cleanup(func() { cancel(); <-done })
	<-ready

	// The primary CNI writes its file again, as it was.
	if err := WriteAtomic(p, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	// Wait for Keep's own rewrite: events on the file until it has the entry.
	for ev := range w.Events {
		if ev.Name != p {
			continue
		}
		if has, err := Has(p); err == nil && has {
			return
		}
	}
	t.Fatal("watcher closed before the entry was back")
}
