package runcwrap

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestSpecToClamp(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"create with bundle", []string{"--root", "/run/runc", "--log", "/x/log.json", "--log-format", "json", "create", "--bundle", "/b", "--pid-file", "/b/pid", "id"}, "/b/config.json"},
		{"create bundle=", []string{"create", "--bundle=/c", "id"}, "/c/config.json"},
		{"run short flag", []string{"--debug", "run", "-b", "/d", "id"}, "/d/config.json"},
		{"create in working dir", []string{"create", "id"}, "/wd/config.json"},
		{"exec process file", []string{"--root", "/r", "exec", "--process", "/tmp/p.json", "--detach", "id"}, "/tmp/p.json"},
		{"exec without process file", []string{"exec", "id", "ls"}, ""},
		{"start", []string{"--root", "/r", "start", "id"}, ""},
		{"no command", []string{"--version"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SpecToClamp(tt.args, "/wd"); got != tt.want {
				t.Errorf("SpecToClamp(%q) = %q, want %q", tt.args, got, tt.want)
			}
		})
	}
}

func TestClamp(t *testing.T) {
	tests := []struct {
		name        string
		in          string
		wantChanged bool
		wantAdj     any // nil: no oomScoreAdj
	}{
		{"spec negative", `{"ociVersion":"1.0.2","process":{"args":["/pause"],"oomScoreAdj":-998},"root":{"path":"rootfs"}}`, true, 0.0},
		{"spec positive", `{"process":{"oomScoreAdj":1000}}`, false, 1000.0},
		{"spec none", `{"process":{"args":["x"]}}`, false, nil},
		{"process file negative", `{"args":["sh"],"oomScoreAdj":-997}`, true, 0.0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "config.json")
			if err := os.WriteFile(p, []byte(tt.in), 0o600); err != nil {
				t.Fatal(err)
			}
			changed, err := Clamp(p)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			data, _ := os.ReadFile(p)
			var doc map[string]any
			if err := json.Unmarshal(data, &doc); err != nil {
				t.Fatal(err)
			}
			proc := doc
			if p, ok := doc["process"].(map[string]any); ok {
				proc = p
				if doc["root"] == nil && tt.name == "spec negative" {
					t.Errorf("root lost: %s", data)
				}
			}
			if got := proc["oomScoreAdj"]; got != tt.wantAdj {
				t.Errorf("oomScoreAdj = %v, want %v (%s)", got, tt.wantAdj, data)
			}
		})
	}
}

func TestClampBadInput(t *testing.T) {
	for _, in := range []string{`not json`, `{"process":[1]}`, `{"process":{"oomScoreAdj":"x"}}`} {
		p := filepath.Join(t.TempDir(), "config.json")
		os.WriteFile(p, []byte(in), 0o600)
		if _, err := Clamp(p); err == nil {
			t.Errorf("Clamp(%s): got no error, want one", in)
		}
	}
	if _, err := Clamp(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("Clamp(missing file): got no error, want one")
	}
}
