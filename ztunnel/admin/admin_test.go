package admin

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	var level slog.LevelVar
	h := Handler(Options{Dump: func() any { return map[string]int{"workloads": 2} }, Level: &level})
	tests := []struct {
		method, path string
		wantCode     int
		wantBody     string
	}{
		{"GET", "/config_dump", 200, `"workloads": 2`},
		{"GET", "/logging", 200, "level: info"},
		{"POST", "/logging?level=debug", 200, "level: debug"},
		{"GET", "/logging?level=debug", 405, "POST"},
		{"POST", "/logging?level=loud", 400, "loud"},
		{"GET", "/debug/pprof/", 200, "goroutine"},
		{"GET", "/version", 200, `"istioVersion":`},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != tt.wantCode || !strings.Contains(string(body), tt.wantBody) {
			t.Errorf("%s %s: got %d %q, want %d containing %q", tt.method, tt.path, rec.Code, body, tt.wantCode, tt.wantBody)
		}
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("level after POST: got %v, want debug", level.Level())
	}
}

func TestReadiness(t *testing.T) {
	var err error = errors.New("no certificates")
	h := Readiness(func() error { return err })
	for _, want := range []int{http.StatusServiceUnavailable, http.StatusOK} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz/ready", nil))
		if rec.Code != want {
			t.Errorf("got %d, want %d", rec.Code, want)
		}
		err = nil
	}
}
