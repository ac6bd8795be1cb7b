package waypoint

import (
	"testing"

	"github.com/ambitmesh/ambit/waypoint/config"
)

func TestNormalizePath(t *testing.T) {
	norm := &config.HCM{NormalizePath: true}
	merge := &config.HCM{NormalizePath: true, MergeSlashes: true}
	reject := &config.HCM{RejectEscapedSlashes: true}
	unescape := &config.HCM{UnescapeSlashes: true, NormalizePath: true}
	for _, tc := range []struct {
		h       *config.HCM
		in, out string
		err     bool
	}{
		{norm, "/a/../admin", "/admin", false},
		{norm, "/./admin/./x?q=/../y", "/admin/x?q=/../y", false},
		{norm, "/%61dmin", "/admin", false},
		{norm, "/a%2fb", "/a%2Fb", false},
		{norm, "/../../x", "/x", false},
		{norm, "/a/b/..", "/a/", false},
		{norm, "/a\\..\\admin", "/admin", false},
		{merge, "//admin//x", "/admin/x", false},
		{reject, "/a%2Fadmin", "", true},
		{unescape, "/x/..%2Fadmin", "/admin", false},
		{&config.HCM{}, "/a/../b", "/a/../b", false},
		{norm, "/api/v1/reviews", "/api/v1/reviews", false},
		{norm, "/a/.well-known/b/..", "/a/.well-known/", false},
		{norm, "/a/.hidden/x.y", "/a/.hidden/x.y", false},
		{norm, "/a/%2e%2e/b", "/b", false},
		{norm, "/", "/", false},
		{norm, "/.", "/", false},
	} {
		got, err := normalizePath(tc.h, tc.in)
		if (err != nil) != tc.err || got != tc.out {
			t.Errorf("normalizePath(%q): got %q, %v; want %q, error %v", tc.in, got, err, tc.out, tc.err)
		}
	}
}
