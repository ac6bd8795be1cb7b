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
	"slices"
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
//
// The file is edited in place, not re-encoded: Ambit's entry goes after
// the last plugin, separated from it as that plugin is from the one
// before, and every other byte stays as it was, so that Remove gives back
// the primary CNI's file byte for byte.
func Insert(path string, entry map[string]any) (bool, error) {
	if entry["type"] != PluginType {
		return false, fmt.Errorf("insert into %s: entry type %v, want %q", path, entry["type"], PluginType)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read conflist: %w", err)
	}
	if _, _, err := parse(path, data); err != nil {
		return false, err
	}
	raw, err := json.Marshal(entry)
	if err != nil {
		return false, fmt.Errorf("encode ambit entry: %w", err)
	}
	els, err := pluginSpans(path, data)
	if err != nil {
		return false, err
	}
	if last := els[len(els)-1]; last.ambit && jsonEqual(data[last.start:last.end], raw) && countAmbit(els) == 1 {
		return false, nil
	}
	out := cutAmbit(data, els)
	if els, err = pluginSpans(path, out); err != nil {
		return false, err
	}
	if len(els) == 0 {
		return false, fmt.Errorf("insert into %s: no plugin but Ambit's: want a primary plugin to chain after", path)
	}
	last := els[len(els)-1]
	// The separator before the last plugin: what follows its comma (or
	// the list's opening bracket).
	ws := last.start
	for ws > 0 && isSpace(out[ws-1]) {
		ws--
	}
	sep := append([]byte(","), out[ws:last.start]...)
	edited := slices.Concat(out[:last.end], sep, raw, out[last.end:])
	return write(path, data, edited)
}

// Remove takes Ambit's entries out of the conflist at path, each with the
// separator Insert put before it. It reports whether the file changed; a
// missing file is not an error.
func Remove(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read conflist: %w", err)
	}
	if _, _, err := parse(path, data); err != nil {
		return false, err
	}
	els, err := pluginSpans(path, data)
	if err != nil {
		return false, err
	}
	if countAmbit(els) == 0 {
		return false, nil
	}
	return write(path, data, cutAmbit(data, els))
}

// span is where one plugin's JSON value is in the file.
type span struct {
	start, end int
	ambit      bool
}

// pluginSpans returns where each element of the top-level "plugins" array
// is in data (a conflist that parse accepted).
func pluginSpans(path string, data []byte) ([]span, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	fail := func(err error) ([]span, error) { return nil, fmt.Errorf("parse conflist %s: %w", path, err) }
	if _, err := dec.Token(); err != nil { // {
		return fail(err)
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return fail(err)
		}
		if key != "plugins" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return fail(err)
			}
			continue
		}
		if _, err := dec.Token(); err != nil { // [
			return fail(err)
		}
		var els []span
		for dec.More() {
			var el json.RawMessage
			if err := dec.Decode(&el); err != nil {
				return fail(err)
			}
			end := int(dec.InputOffset())
			els = append(els, span{start: end - len(el), end: end, ambit: isAmbit(el)})
		}
		return els, nil
	}
	return fail(errors.New("no plugins"))
}

// cutAmbit removes Ambit's elements from data: each with the comma and
// space before it, or, for a first element, with those after it.
func cutAmbit(data []byte, els []span) []byte {
	out := slices.Clone(data)
	for i := len(els) - 1; i >= 0; i-- {
		e := els[i]
		if !e.ambit {
			continue
		}
		if i > 0 {
			out = slices.Delete(out, els[i-1].end, e.end)
			continue
		}
		// The first element, cut last: the elements after it up to the
		// first kept one went with their separators, [els[0].end,
		// els[j-1].end); the kept one now starts that much earlier.
		j := slices.IndexFunc(els, func(s span) bool { return !s.ambit })
		if j < 0 {
			out = slices.Delete(out, e.start, e.end)
			continue
		}
		out = slices.Delete(out, e.start, els[j].start-(els[j-1].end-e.end))
	}
	return out
}

func countAmbit(els []span) int {
	n := 0
	for _, e := range els {
		if e.ambit {
			n++
		}
	}
	return n
}

func jsonEqual(a, b []byte) bool {
	var x, y bytes.Buffer
	return json.Compact(&x, a) == nil && json.Compact(&y, b) == nil && bytes.Equal(x.Bytes(), y.Bytes())
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

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

// write writes the edited conflist atomically (temporary file in the same
// directory, then rename) with the old file's mode, unless it is unchanged.
func write(path string, old, out []byte) (bool, error) {
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
