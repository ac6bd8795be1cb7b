package main

import "testing"

// TestGCTarget: without GOGC the waypoint collects at gcPercent; a GOGC
// the operator set (a number or off) is left as the runtime applied it.
func TestGCTarget(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want int
		set  bool
	}{
		{"", gcPercent, true},
		{"100", 0, false},
		{"off", 0, false},
	} {
		got, set := gcTarget(tc.env)
		if got != tc.want || set != tc.set {
			t.Errorf("gcTarget(%q): got %d, %v, want %d, %v", tc.env, got, set, tc.want, tc.set)
		}
	}
}
