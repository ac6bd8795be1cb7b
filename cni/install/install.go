// Package install chains Ambit's CNI plugin into a node's existing CNI
// configuration and keeps it there: it copies the plugin binary into the
// CNI bin directory, inserts Ambit's entry at the end of the primary
// .conflist (written atomically, other content untouched), puts it back when
// the primary CNI rewrites the file, and takes it out on uninstall.
package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PluginType is the "type" of Ambit's entry in a conflist: the plugin
// binary's name.
const PluginType = "ambit-cni"

// ErrNoConflist is returned when the directory has no .conflist to chain
// into (the primary CNI has not written its configuration yet).
var ErrNoConflist = errors.New("no .conflist in the CNI config dir")

// PrimaryConflist returns the file a container runtime would use: the first
// .conflist in lexical order.
func PrimaryConflist(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.conflist"))
	if err != nil {
		return "", fmt.Errorf("list %s: %w", dir, err)
	}
	if len(files) == 0 {
		return "", fmt.Errorf("find conflist in %s: %w", dir, ErrNoConflist)
	}
	sort.Strings(files)
	return files[0], nil
}

// Insert puts entry (Ambit's plugin configuration, with "type":
// PluginType) last in the plugins of the conflist at path, replacing an
// older Ambit entry. It reports whether the file changed. A file that is
// not a valid conflist is refused and left as it is.
func Insert(path string, entry map[string]any) (bool, error) {
	if entry["type"] != PluginType {
		return false, fmt.Errorf("insert into %s: entry type %v, want %q", path, entry["type"], PluginType)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read conflist: %w", err)
	}
	conf, plugins, err := parse(path, data)
	if err != nil {
		return false, err
	}
	raw, err := json.Marshal(entry)
	if err != nil {
		return false, fmt.Errorf("encode ambit entry: %w", err)
	}
	var kept []json.RawMessage
	for _, p := range plugins {
		if !isAmbit(p) {
			kept = append(kept, p)
		}
	}
	kept = append(kept, raw)
	return write(path, data, conf, kept)
}

// Remove takes Ambit's entries out of the conflist at path. It reports
// whether the file changed; a missing file is not an error.
func Remove(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read conflist: %w", err)
	}
	conf, plugins, err := parse(path, data)
	if err != nil {
		return false, err
	}
	var kept []json.RawMessage
	for _, p := range plugins {
		if !isAmbit(p) {
			kept = append(kept, p)
		}
	}
	if len(kept) == len(plugins) {
		return false, nil
	}
	return write(path, data, conf, kept)
}

// Has reports whether the conflist at path has Ambit's entry last.
func Has(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read conflist: %w", err)
	}
	_, plugins, err := parse(path, data)
	if err != nil {
		return false, err
	}
	return len(plugins) > 0 && isAmbit(plugins[len(plugins)-1]), nil
}

// parse checks that data is a conflist: a JSON object with a name, a
// cniVersion and a non-empty list of plugins that each have a type.
func parse(path string, data []byte) (map[string]json.RawMessage, []json.RawMessage, error) {
	var conf map[string]json.RawMessage
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, nil, fmt.Errorf("parse conflist %s: %w", path, err)
	}
	for _, k := range []string{"name", "cniVersion", "plugins"} {
		if _, ok := conf[k]; !ok {
			return nil, nil, fmt.Errorf("parse conflist %s: no %q: want a network configuration list", path, k)
		}
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(conf["plugins"], &plugins); err != nil {
		return nil, nil, fmt.Errorf("parse conflist %s: plugins: %w", path, err)
	}
	if len(plugins) == 0 {
		return nil, nil, fmt.Errorf("parse conflist %s: empty plugins: want a primary plugin to chain after", path)
	}
	for i, p := range plugins {
		var pc struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(p, &pc); err != nil || pc.Type == "" {
			return nil, nil, fmt.Errorf("parse conflist %s: plugin %d has no type", path, i)
		}
	}
	return conf, plugins, nil
}

func isAmbit(p json.RawMessage) bool {
	var pc struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(p, &pc) == nil && pc.Type == PluginType
}

// write replaces the plugins and writes the file atomically (temporary
// file in the same directory, then rename) with the old file's mode.
func write(path string, old []byte, conf map[string]json.RawMessage, plugins []json.RawMessage) (bool, error) {
	list, err := json.Marshal(plugins)
	if err != nil {
		return false, fmt.Errorf("encode plugins: %w", err)
	}
	conf["plugins"] = list
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return false, fmt.Errorf("encode conflist: %w", err)
	}
	out = append(out, '\n')
	if bytes.Equal(out, old) {
		return false, nil
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := WriteAtomic(path, out, mode); err != nil {
		return false, err
	}
	return true, nil
}

// WriteAtomic writes data to path through a temporary file and a rename,
// so readers see the old or the new file, never a part.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// CopyBinary installs the plugin binary src as dir/PluginType, atomically,
// so a runtime executing the old one is not disturbed.
func CopyBinary(src, dir string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	dst := filepath.Join(dir, PluginType)
	tmp, err := os.CreateTemp(dir, "."+PluginType+".tmp-")
	if err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("install plugin binary: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("install plugin binary: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	return nil
}

// isTemp reports whether name is one of our temporary files.
func isTemp(name string) bool { return strings.Contains(filepath.Base(name), ".tmp-") }
