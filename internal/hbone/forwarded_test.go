package hbone

import "testing"

func TestForwardedFor(t *testing.T) {
	tests := []struct {
		header string
		want   string // "" for none
	}{
		{"for=10.0.0.1", "10.0.0.1"},
		{`for="10.0.0.1:4711"`, "10.0.0.1"},
		{`For="[fd00::1]"`, "fd00::1"},
		{`for="[fd00::1]:4711"`, "fd00::1"},
		{"proto=https;for=10.0.0.2;by=10.0.0.9", "10.0.0.2"},
		{"for=10.0.0.3, for=10.0.0.4", "10.0.0.3"},
		{"for=::ffff:10.0.0.5", "10.0.0.5"},
		{"for=unknown", ""},
		{"for=_hidden", ""},
		{`for="[fe80::1%eth0]"`, ""},
		{"by=10.0.0.1", ""},
		{"", ""},
	}
	for _, tt := range tests {
		a, ok := ParseForwarded(tt.header)
		got := ""
		if ok {
			got = a.String()
		}
		if got != tt.want {
			t.Errorf("ParseForwarded(%q): got %q, want %q", tt.header, got, tt.want)
		}
	}
}
