package waypoint

import (
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambitmesh/ambit/waypoint/config"
)

// TestSpanQueueFull: a span that does not fit the export queue is
// dropped and counted against its provider, never waited for.
func TestSpanQueueFull(t *testing.T) {
	tr := newTracer(nil) // not running: nothing drains the queue
	zipkin := &requestRecord{trace: &spanContext{tracing: &config.Tracing{Zipkin: &config.Zipkin{}}}}
	otel := &requestRecord{trace: &spanContext{tracing: &config.Tracing{OTel: &config.OTel{Exporter: config.OTLPExporter{Cluster: "otel"}}}}}
	for range spanQueue {
		tr.queue <- &finishedSpan{}
	}
	for range 3 {
		tr.record(zipkin, "-", 0, 0, 0)
	}
	tr.record(otel, "-", 0, 0, 0)
	if got := len(tr.queue); got != spanQueue {
		t.Errorf("queued: got %d, want %d", got, spanQueue)
	}
	if got := testutil.ToFloat64(tr.zipkin.spansDropped); got != 3 {
		t.Errorf("zipkin dropped: got %v, want 3", got)
	}
	if got := testutil.ToFloat64(tr.otel.spansDropped); got != 1 {
		t.Errorf("opentelemetry dropped: got %v, want 1", got)
	}
}

// TestStartW3CSpan: the OpenTelemetry tracer's trace context: W3C only,
// the caller's sampled flag wins, always_on samples everything, a
// traceparent that does not parse means no span.
func TestStartW3CSpan(t *testing.T) {
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, tc := range []struct {
		name        string
		in          http.Header
		sampling    float64
		always      bool
		wantNil     bool
		wantParent  string
		wantSampled bool
		wantState   string
	}{
		{name: "new trace", in: http.Header{}, sampling: 100, wantSampled: true},
		{name: "new trace unsampled", in: http.Header{}, sampling: 0},
		{name: "always_on", in: http.Header{"Traceparent": {"00-" + trace + "-" + parent + "-00"}}, sampling: 0, always: true, wantParent: parent, wantSampled: true},
		{name: "sampled caller", in: http.Header{"Traceparent": {"00-" + trace + "-" + parent + "-01"}, "Tracestate": {"a=1", "b=2"}},
			sampling: 0, wantParent: parent, wantSampled: true, wantState: "a=1,b=2"},
		{name: "b3 ignored", in: http.Header{"X-B3-Traceid": {trace}, "X-B3-Spanid": {parent}, "X-B3-Sampled": {"1"}}, sampling: 0},
		{name: "malformed", in: http.Header{"Traceparent": {"00-" + trace + "-" + parent}}, sampling: 100, wantNil: true},
		{name: "two traceparents", in: http.Header{"Traceparent": {"00-" + trace + "-" + parent + "-01", "00-" + trace + "-" + parent + "-01"}}, wantNil: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &config.Tracing{RandomSampling: tc.sampling, OverallSampling: 100, OTel: &config.OTel{AlwaysSample: tc.always}}
			b3 := tc.in.Get("X-B3-Spanid")
			s := startW3CSpan(tr, tc.in)
			if tc.wantNil {
				if s != nil {
					t.Fatalf("span: got %+v, want none", s)
				}
				return
			}
			if s.parentID != tc.wantParent || s.sampled != tc.wantSampled || s.tracestate != tc.wantState || len(s.traceID) != 32 {
				t.Errorf("span: got trace %q parent %q sampled %v tracestate %q, want 32 hex digits, %q %v %q",
					s.traceID, s.parentID, s.sampled, s.tracestate, tc.wantParent, tc.wantSampled, tc.wantState)
			}
			flag := map[bool]string{true: "01", false: "00"}[tc.wantSampled]
			if got, want := tc.in.Get("Traceparent"), "00-"+s.traceID+"-"+s.spanID+"-"+flag; got != want {
				t.Errorf("traceparent out: got %q, want %q", got, want)
			}
			if got := tc.in.Get("Tracestate"); got != tc.wantState {
				t.Errorf("tracestate out: got %q, want %q", got, tc.wantState)
			}
			if got := tc.in.Get("X-B3-Spanid"); got != b3 || tc.in.Get("X-B3-Sampled") != "" && b3 == "" {
				t.Errorf("b3 out: got x-b3-spanid %q, want %q (untouched)", got, b3)
			}
		})
	}
}

// TestOTLPSpan: ids become bytes (a 64-bit trace id left-padded), the
// tags string attributes in order, times nanoseconds.
func TestOTLPSpan(t *testing.T) {
	s := (&finishedSpan{ctx: &spanContext{traceID: "48485a3953bb6124", spanID: "a2fb4a1d1a96d312", tracestate: "x=y"},
		tags: []config.Attribute{{Key: "component", Value: "proxy"}, {Key: "http.status_code", Value: "200"}}}).otlp()
	if got := s.GetTraceId(); len(got) != 16 || got[7] != 0 || got[8] != 0x48 {
		t.Errorf("trace id: got %x, want 000000000000000048485a3953bb6124", got)
	}
	if len(s.GetParentSpanId()) != 0 || s.GetTraceState() != "x=y" {
		t.Errorf("parent, tracestate: got %x %q, want none and x=y", s.GetParentSpanId(), s.GetTraceState())
	}
	if a := s.GetAttributes(); len(a) != 2 || a[1].GetKey() != "http.status_code" || a[1].GetValue().GetStringValue() != "200" {
		t.Errorf("attributes: got %v, want component, http.status_code=200", a)
	}
}

// TestNoExporterNoSpan: an OpenTelemetry provider the waypoint cannot
// export to (google_grpc) still propagates W3C context but queues
// nothing, and counts no drop.
func TestNoExporterNoSpan(t *testing.T) {
	tr := newTracer(nil)
	cfg := &config.Tracing{RandomSampling: 100, OverallSampling: 100, OTel: &config.OTel{}}
	h := http.Header{}
	s := startSpan(cfg, h)
	if s == nil || !s.sampled || h.Get("Traceparent") == "" || h.Get("X-B3-Traceid") != "" {
		t.Fatalf("context: got span %+v, headers %v; want a sampled W3C-only context", s, h)
	}
	tr.record(&requestRecord{trace: s}, "-", 0, 0, 0)
	if len(tr.queue) != 0 || testutil.ToFloat64(tr.otel.spansDropped) != 0 {
		t.Errorf("queued %d, dropped %v: want nothing", len(tr.queue), testutil.ToFloat64(tr.otel.spansDropped))
	}
}
