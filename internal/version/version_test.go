package version

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/ambitmesh/ambit/api"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got Info
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatalf("decode: %v", err)
	}
	want := Info{Version: Dev, IstioVersion: api.IstioVersion, GoVersion: runtime.Version()}
	if got != want {
		t.Errorf("GET %s: got %+v, want %+v", Path, got, want)
	}
	post, err := http.Post(srv.URL+Path, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: got status %d, want %d", Path, post.StatusCode, http.StatusMethodNotAllowed)
	}
}

func TestStamped(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "1.2.3"
	if got := Get().Version; got != "1.2.3" {
		t.Errorf("stamped version: got %q, want %q", got, "1.2.3")
	}
}
