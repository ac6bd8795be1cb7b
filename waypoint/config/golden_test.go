package config_test

import (
	"path/filepath"
	"testing"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestGolden: istiod's golden waypoint xDS (copied from
// istiod/waypoint/testdata) builds into a snapshot with Istio's three
// listeners and their chains.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("../testdata/istiod/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("golden files: got %v (%v), want some", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r, err := config.LoadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			s, err := r.Build()
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			for _, name := range []string{"connect_terminate", "main_internal", "connect_originate"} {
				if s.Listeners[name] == nil {
					t.Errorf("listener %s: missing", name)
				}
			}
			if mi := s.Listeners["main_internal"]; mi != nil && mi.Matcher == nil {
				t.Error("main_internal: no filter_chain_matcher")
			}
		})
	}
}
