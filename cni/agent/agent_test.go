package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDecodeRefusesBadRequests: the plugin's requests are checked before
// anything is enrolled; bad ones get 400 with the reason.
func TestDecodeRefusesBadRequests(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"garbage", `{"namespace":`, "decode pod request"},
		{"bad address", `{"namespace":"ns","name":"p","ips":["10.0.0.300"]}`, `pod address "10.0.0.300"`},
		{"no name", `{"namespace":"ns","ips":["10.0.0.3"]}`, "want namespace and name"},
		{"too large", `{"namespace":"` + strings.Repeat("x", 70<<10) + `"}`, "decode pod request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/v1/pods/add", strings.NewReader(tc.body))
			if _, _, ok := decode(w, r); ok {
				t.Fatal("decode: got ok, want refusal")
			}
			if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("decode: got %d %q, want 400 containing %q", w.Code, w.Body.String(), tc.want)
			}
		})
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/v1/pods/add", strings.NewReader(`{"namespace":"ns","name":"p","ips":["10.0.0.3"]}`))
	req, ips, ok := decode(w, r)
	if !ok || req.Name != "p" || len(ips) != 1 || ips[0].String() != "10.0.0.3" {
		t.Errorf("decode of a good request: got %+v %v %v, want p with 10.0.0.3", req, ips, ok)
	}
}
