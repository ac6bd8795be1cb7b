package meshconfig

import (
	"errors"
	"strings"
	"testing"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
)

func TestParseDefaults(t *testing.T) {
	for _, y := range []string{"", "  \n", "{}"} {
		m, err := Parse(y)
		if err != nil {
			t.Fatalf("Parse(%q): %v", y, err)
		}
		if !m.GetEnableTracing() || m.GetRootNamespace() != "istio-system" || m.GetAccessLogFile() != "" ||
			m.GetAccessLogEncoding() != meshv1alpha1.MeshConfig_TEXT || Provider(m, "prometheus") == nil || Provider(m, "envoy") == nil {
			t.Errorf("Parse(%q) = %v, want Istio's defaults", y, m)
		}
	}
}

func TestParseOverrides(t *testing.T) {
	m, err := Parse(`
enableTracing: false
accessLogFile: /dev/stdout
accessLogEncoding: JSON
defaultConfig:
  tracing:
    sampling: 25
    maxPathTagLength: 99
defaultProviders:
  tracing: [zipkin]
extensionProviders:
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
- name: envoy
  envoyFileAccessLog:
    path: /var/log/access.log
`)
	if err != nil {
		t.Fatal(err)
	}
	if m.GetEnableTracing() {
		t.Errorf("enableTracing: got true, want the explicit false")
	}
	if m.GetAccessLogFile() != "/dev/stdout" || m.GetAccessLogEncoding() != meshv1alpha1.MeshConfig_JSON {
		t.Errorf("access log: got %q %v", m.GetAccessLogFile(), m.GetAccessLogEncoding())
	}
	if s := m.GetDefaultConfig().GetTracing().GetSampling(); s != 25 {
		t.Errorf("defaultConfig.tracing.sampling: got %v, want 25", s)
	}
	if got := m.GetDefaultProviders().GetTracing(); len(got) != 1 || got[0] != "zipkin" {
		t.Errorf("defaultProviders.tracing: got %v", got)
	}
	// By name: envoy replaced, prometheus kept, zipkin added.
	if p := Provider(m, "envoy").GetEnvoyFileAccessLog().GetPath(); p != "/var/log/access.log" {
		t.Errorf("envoy provider path: got %q, want the user's", p)
	}
	if Provider(m, "prometheus") == nil || Provider(m, "ZIPKIN").GetZipkin().GetPort() != 9411 {
		t.Errorf("providers: got %v", m.GetExtensionProviders())
	}
	if m.GetRootNamespace() != "istio-system" {
		t.Errorf("rootNamespace: got %q, want the default kept", m.GetRootNamespace())
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, y, want string }{
		{"not yaml", "a: [", "parse mesh config"},
		{"unknown field", "enableTracin: true", "enableTracin"},
		{"wrong type", "enableTracing: maybe", "enableTracing"},
		{"bad encoding", "accessLogEncoding: XML", "accessLogEncoding"},
		{"sampling", "defaultConfig:\n  tracing:\n    sampling: 120", "sampling"},
		{"no service", "extensionProviders:\n- name: z\n  zipkin:\n    port: 9411", `"z" (zipkin): empty service`},
		{"bad port", "extensionProviders:\n- name: o\n  opentelemetry:\n    service: otel\n    port: 0", "port 0"},
		{"duplicate", "extensionProviders:\n- name: a\n  prometheus: {}\n- name: A\n  prometheus: {}", "duplicate name"},
		{"no provider", "extensionProviders:\n- name: nothing", "no provider"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.y)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: err %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := Parse("extensionProviders:\n- name: nothing"); !errors.Is(err, ErrInvalid) {
		t.Errorf("a validation error: got %v, want ErrInvalid", err)
	}
}
