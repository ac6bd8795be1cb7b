// Package meshconfig reads Istio's MeshConfig (istio.io/api
// mesh/v1alpha1) as istiod does: the YAML under key "mesh" of the
// ConfigMap "istio" in istiod's namespace, applied over Istio's defaults
// (top-level fields override; defaultConfig merges field by field;
// extensionProviders merge by name; defaultProviders replace), then
// validated. A Watcher keeps the current one and tells its subscribers
// of every change; a MeshConfig that does not parse or validate is
// reported (log and a Warning Event on the ConfigMap) and the last good
// one stays in force, so a typo never takes telemetry or traffic down.
//
// Of MeshConfig, istiod applies to waypoints what docs/telemetry.md
// lists: extensionProviders, defaultProviders, accessLogFile,
// accessLogEncoding, accessLogFormat, enableTracing and
// defaultConfig.tracing (sampling, custom tags, max path tag length).
package meshconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

// Where istiod reads its MeshConfig, Istio's names.
const (
	ConfigMapName = "istio"
	ConfigMapKey  = "mesh"
)

// DefaultTraceSampling is Istio's PILOT_TRACE_SAMPLING default: the
// percentage of requests traced when nothing else says.
const DefaultTraceSampling = 1.0

// Default is Istio's default MeshConfig, as far as Ambit reads it: root
// namespace istio-system, tracing enabled (sampling
// DefaultTraceSampling, no provider), no access log (TEXT encoding when
// one is turned on), and the built-in extension providers "prometheus"
// and "envoy" (a file access log to /dev/stdout).
func Default() *meshv1alpha1.MeshConfig {
	return &meshv1alpha1.MeshConfig{
		RootNamespace:     "istio-system",
		EnableTracing:     true,
		AccessLogEncoding: meshv1alpha1.MeshConfig_TEXT,
		DefaultConfig:     &meshv1alpha1.ProxyConfig{},
		DefaultProviders:  &meshv1alpha1.MeshConfig_DefaultProviders{},
		ExtensionProviders: []*meshv1alpha1.MeshConfig_ExtensionProvider{
			{Name: "prometheus", Provider: &meshv1alpha1.MeshConfig_ExtensionProvider_Prometheus{
				Prometheus: &meshv1alpha1.MeshConfig_ExtensionProvider_PrometheusMetricsProvider{}}},
			{Name: "envoy", Provider: &meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLog{
				EnvoyFileAccessLog: &meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLogProvider{Path: "/dev/stdout"}}},
		},
	}
}

// Parse applies the MeshConfig YAML y over Default and validates the
// result. Unknown fields are errors, as in Istio.
func Parse(y string) (*meshv1alpha1.MeshConfig, error) {
	def := Default()
	if strings.TrimSpace(y) == "" {
		return def, nil
	}
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		return nil, fmt.Errorf("parse mesh config: %w", err)
	}
	var user map[string]any
	if err := json.Unmarshal(js, &user); err != nil {
		return nil, fmt.Errorf("parse mesh config: %w", err)
	}
	if user == nil {
		return def, nil
	}
	// Check the user's part alone first: its errors then name its
	// fields, not the merge's.
	if err := protojson.Unmarshal(js, &meshv1alpha1.MeshConfig{}); err != nil {
		return nil, fmt.Errorf("parse mesh config: %w", err)
	}
	base, err := toMap(def)
	if err != nil {
		return nil, err
	}
	for k, v := range user {
		switch normalKey(k) {
		case "defaultConfig":
			// ProxyConfig merges field by field over the default.
			pc, _ := base["defaultConfig"].(map[string]any)
			if pc == nil {
				pc = map[string]any{}
			}
			if m, ok := v.(map[string]any); ok {
				for pk, pv := range m {
					pc[pk] = pv
				}
			}
			base["defaultConfig"] = pc
		case "extensionProviders":
			base["extensionProviders"] = mergeProviders(base["extensionProviders"], v)
		default:
			delete(base, normalKey(k))
			base[k] = v
		}
	}
	merged, err := json.Marshal(base)
	if err != nil {
		return nil, fmt.Errorf("merge mesh config: %w", err)
	}
	out := &meshv1alpha1.MeshConfig{}
	if err := protojson.Unmarshal(merged, out); err != nil {
		return nil, fmt.Errorf("parse mesh config: %w", err)
	}
	if out.DefaultConfig == nil {
		out.DefaultConfig = &meshv1alpha1.ProxyConfig{}
	}
	if out.DefaultProviders == nil {
		out.DefaultProviders = &meshv1alpha1.MeshConfig_DefaultProviders{}
	}
	if err := Validate(out); err != nil {
		return nil, err
	}
	return out, nil
}

// normalKey is a top-level field's JSON name (users may write proto
// names: default_config).
func normalKey(k string) string {
	switch k {
	case "default_config":
		return "defaultConfig"
	case "extension_providers":
		return "extensionProviders"
	}
	return k
}

func toMap(m *meshv1alpha1.MeshConfig) (map[string]any, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal mesh config: %w", err)
	}
	out := map[string]any{}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("marshal mesh config: %w", err)
	}
	return out, nil
}

// mergeProviders merges the user's providers into the defaults by name:
// a provider of a default's name replaces it, others are appended.
func mergeProviders(def, user any) any {
	ds, _ := def.([]any)
	us, ok := user.([]any)
	if !ok {
		return user // not a list: protojson reports it
	}
	out := append([]any(nil), ds...)
	for _, u := range us {
		um, _ := u.(map[string]any)
		name, _ := um["name"].(string)
		replaced := false
		for i, d := range out {
			if dm, _ := d.(map[string]any); dm != nil && dm["name"] == name && name != "" {
				out[i] = u
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, u)
		}
	}
	return out
}

// ErrInvalid marks a MeshConfig that parsed but is not valid.
var ErrInvalid = errors.New("invalid mesh config")

// Validate checks what istiod relies on, as Istio's ValidateMeshConfig
// does for these fields: providers have unique names and a collector
// service and port where they export; sampling percentages are within
// 0-100; the access log encoding is TEXT or JSON.
func Validate(m *meshv1alpha1.MeshConfig) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	seen := map[string]bool{}
	for i, p := range m.GetExtensionProviders() {
		name := p.GetName()
		if name == "" {
			bad("extensionProviders[%d]: empty name", i)
		} else if seen[strings.ToLower(name)] {
			bad("extensionProviders[%d]: duplicate name %q", i, name)
		}
		seen[strings.ToLower(name)] = true
		svcPort := func(kind, svc string, port uint32) {
			if svc == "" {
				bad("extensionProviders %q (%s): empty service", name, kind)
			}
			if port == 0 || port > 65535 {
				bad("extensionProviders %q (%s): port %d, want 1-65535", name, kind, port)
			}
		}
		switch pr := p.GetProvider().(type) {
		case *meshv1alpha1.MeshConfig_ExtensionProvider_Zipkin:
			svcPort("zipkin", pr.Zipkin.GetService(), pr.Zipkin.GetPort())
		case *meshv1alpha1.MeshConfig_ExtensionProvider_Opentelemetry:
			svcPort("opentelemetry", pr.Opentelemetry.GetService(), pr.Opentelemetry.GetPort())
		case *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyOtelAls:
			svcPort("envoyOtelAls", pr.EnvoyOtelAls.GetService(), pr.EnvoyOtelAls.GetPort())
		case *meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyFileAccessLog:
			if lf := pr.EnvoyFileAccessLog.GetLogFormat(); lf != nil && lf.GetLogFormat() == nil {
				bad("extensionProviders %q (envoyFileAccessLog): logFormat with neither text nor labels", name)
			}
		case nil:
			bad("extensionProviders %q: no provider", name)
		}
	}
	if s := m.GetDefaultConfig().GetTracing().GetSampling(); s < 0 || s > 100 {
		bad("defaultConfig.tracing.sampling %v, want 0-100", s)
	}
	switch m.GetAccessLogEncoding() {
	case meshv1alpha1.MeshConfig_TEXT, meshv1alpha1.MeshConfig_JSON:
	default:
		bad("accessLogEncoding %v, want TEXT or JSON", m.GetAccessLogEncoding())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// Provider is the extension provider named name (case-insensitive, as
// Istio), nil when there is none.
func Provider(m *meshv1alpha1.MeshConfig, name string) *meshv1alpha1.MeshConfig_ExtensionProvider {
	for _, p := range m.GetExtensionProviders() {
		if strings.EqualFold(p.GetName(), name) {
			return p
		}
	}
	return nil
}
