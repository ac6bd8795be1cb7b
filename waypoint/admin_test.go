package waypoint_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAdmin: readiness only with config; /config_dump in Envoy's
// ConfigDump shape; /stats/prometheus counts RBAC denials.
func TestAdmin(t *testing.T) {
	p := testProxy(t, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Stats())
	quit := make(chan struct{})
	admin := httptest.NewServer(p.AdminHandler(reg, func() { close(quit) }))
	defer admin.Close()
	ready := httptest.NewServer(p.ReadinessHandler())
	defer ready.Close()
	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(ready.URL + "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("readiness without config: got %d, want 503", code)
	}
	snap, err := basicConfig(addrs()).resources().Build()
	if err != nil {
		t.Fatal(err)
	}
	p.Update(snap)
	if code, body := get(ready.URL + "/healthz/ready"); code != http.StatusOK {
		t.Errorf("readiness with config: got %d %s, want 200", code, body)
	}
	code, body := get(admin.URL + "/config_dump")
	if code != http.StatusOK {
		t.Fatalf("config_dump: got %d", code)
	}
	var dump struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range dump.Configs {
		types = append(types, c["@type"].(string))
	}
	want := "type.googleapis.com/envoy.admin.v3.ClustersConfigDump type.googleapis.com/envoy.admin.v3.EndpointsConfigDump type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
	if got := strings.Join(types, " "); got != want {
		t.Errorf("config_dump types: got %s, want %s", got, want)
	}
	if !regexp.MustCompile(`"name":\s*"main_internal"`).MatchString(body) {
		t.Error("config_dump: no main_internal listener")
	}
	if code, body := get(admin.URL + "/stats/prometheus"); code != 200 || !strings.Contains(body, "envoy_http_rbac_denied") {
		t.Errorf("stats: got %d, want the RBAC counter among\n%s", code, body)
	}
	resp, err := http.Post(admin.URL+"/quitquitquit", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-quit
}
