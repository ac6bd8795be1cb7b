// Package runcwrap is the lab's wrapper around runc: containerd runs it in
// runc's place (the runtime's BinaryName) on the lab's real nodes. The lab
// machines lack CAP_SYS_RESOURCE, so runc cannot set the negative
// oom_score_adj the kubelet asks for (pod sandboxes get -998, Guaranteed
// containers -997) and container creation fails with "can't get final
// child's PID from pipe: EOF". The wrapper clamps a negative
// process.oomScoreAdj of the bundle's config.json (create, run) or of the
// process file (exec) to 0 and then runs runc with the arguments it was
// given. Test tooling only: a real node runs runc itself.
package runcwrap

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Runc is the runc the wrapper runs (Debian's).
const Runc = "/usr/sbin/runc"

// SpecToClamp returns the file whose oomScoreAdj must be clamped before
// runc runs with args (runc's arguments without the program name), or ""
// when there is none. For create and run it is the bundle's config.json
// (--bundle/-b, else the working directory wd); for exec the --process
// file, if given.
func SpecToClamp(args []string, wd string) string {
	cmd, rest := subcommand(args)
	switch cmd {
	case "create", "run":
		bundle := wd
		if v, ok := flagValue(rest, "bundle", "b"); ok {
			bundle = v
		}
		return filepath.Join(bundle, "config.json")
	case "exec":
		if v, ok := flagValue(rest, "process", "p"); ok {
			return v
		}
	}
	return ""
}

// subcommand returns runc's command and the arguments after it, skipping
// the global options before it (all of which take a value except the
// booleans listed).
func subcommand(args []string) (string, []string) {
	boolFlags := map[string]bool{"debug": true, "systemd-cgroup": true, "help": true, "h": true, "version": true, "v": true}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return a, args[i+1:]
		}
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") || boolFlags[name] {
			continue
		}
		i++ // the flag's value
	}
	return "", nil
}

// flagValue finds --long/-short VALUE or --long=VALUE among args.
func flagValue(args []string, long, short string) (string, bool) {
	for i, a := range args {
		for _, n := range []string{"--" + long, "-" + long, "-" + short} {
			if a == n && i+1 < len(args) {
				return args[i+1], true
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// Clamp rewrites a negative oomScoreAdj in the OCI file at path (a
// runtime spec with a "process" object, or a process object itself) to 0,
// keeping everything else. It reports whether it changed the file.
func Clamp(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return false, fmt.Errorf("parse %s: want a JSON object: %w", path, err)
	}
	proc := doc
	var inSpec bool
	if raw, ok := doc["process"]; ok {
		if err := json.Unmarshal(raw, &proc); err != nil {
			return false, fmt.Errorf("parse %s: process: want a JSON object: %w", path, err)
		}
		inSpec = true
	}
	raw, ok := proc["oomScoreAdj"]
	if !ok {
		return false, nil
	}
	var adj int
	if err := json.Unmarshal(raw, &adj); err != nil {
		return false, fmt.Errorf("parse %s: oomScoreAdj: want an integer: %w", path, err)
	}
	if adj >= 0 {
		return false, nil
	}
	proc["oomScoreAdj"] = json.RawMessage("0")
	if inSpec {
		b, err := json.Marshal(proc)
		if err != nil {
			return false, fmt.Errorf("encode %s: %w", path, err)
		}
		doc["process"] = b
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return false, fmt.Errorf("encode %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := os.WriteFile(path, out, fi.Mode().Perm()); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}
