package redirect

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/ambitmesh/ambit/internal/mesh"
)

// TestMarksAgree: redirect.c's marks are the ones ztunnel and the agent
// use (internal/mesh), so the C side and the Go side cannot drift apart.
func TestMarksAgree(t *testing.T) {
	src, err := os.ReadFile("redirect.c")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"REDIRECT_MARK": mesh.CaptureMark,
		"PATH_MARK":     mesh.PodPathMark,
		"REPLY_MARK":    mesh.ReplyMark,
		"REENTER_MARK":  mesh.ReenterMark,
	}
	for name, w := range want {
		m := regexp.MustCompile(`(?m)^#define ` + name + `\s+(0x[0-9a-fA-F]+)\s*$`).FindSubmatch(src)
		if m == nil {
			t.Errorf("redirect.c: no #define %s", name)
			continue
		}
		got, err := strconv.ParseInt(string(m[1]), 0, 64)
		if err != nil || int(got) != w {
			t.Errorf("redirect.c %s: got %s, want %#x (internal/mesh)", name, m[1], w)
		}
	}
}
