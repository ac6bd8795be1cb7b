package kubelog_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/ambitmesh/ambit/internal/kubelog"
)

// recorder keeps the records at or above its level.
type recorder struct {
	level slog.Level
	mu    sync.Mutex
	recs  []slog.Record
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.level }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.recs = append(r.recs, rec.Clone())
	r.mu.Unlock()
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) find(msg string) []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []slog.Record
	for _, rec := range r.recs {
		if rec.Message == msg {
			out = append(out, rec)
		}
	}
	return out
}

// apiserver serves the namespaces of an empty cluster: the list, and
// watches that answer nothing, as an idle apiserver's do. watching
// receives each of those watches when it arrives.
func apiserver(t *testing.T, watching chan<- struct{}) *rest.Config {
	t.Helper()
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		q := req.URL.Query()
		switch {
		case q.Get("watch") != "true":
			json.NewEncoder(w).Encode(&corev1.NamespaceList{TypeMeta: metav1.TypeMeta{Kind: "NamespaceList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: "1"}})
		case q.Get("sendInitialEvents") == "true":
			// No streamed lists (as apiservers before 1.32): client-go
			// falls back to list, then watch.
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest})
		default:
			// The watch is open; no event, not even the headers, until
			// the client gives up.
			select {
			case watching <- struct{}{}:
			case <-stop:
			}
			select {
			case <-req.Context().Done():
			case <-stop:
			}
		}
	}))
	t.Cleanup(func() {
		close(stop)
		srv.Close()
	})
	return &rest.Config{Host: srv.URL}
}

// TestCancelledWatchIsNotAnError: informers stopped while their watch is
// open, as at every shutdown, log no error, only the cancelled watch at
// Debug; the component's handler gets client-go's records (they did not
// go to klog's stderr).
func TestCancelledWatchIsNotAnError(t *testing.T) {
	rec := &recorder{level: slog.LevelDebug}
	kubelog.Route(rec)
	t.Cleanup(klog.ClearLogger)
	watching := make(chan struct{})
	kube, err := kubernetes.NewForConfig(apiserver(t, watching))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// Three informers, each with its watch open (its request in flight)
	// when they are stopped.
	var fs []informers.SharedInformerFactory
	for range 3 {
		f := informers.NewSharedInformerFactory(kube, 0)
		f.Core().V1().Namespaces().Informer()
		f.Start(ctx.Done())
		fs = append(fs, f)
	}
	for range fs {
		select {
		case <-watching:
		case <-ctx.Done():
			t.Fatalf("watches: %v", ctx.Err())
		}
	}
	cancel()
	for _, f := range fs {
		f.Shutdown()
	}

	failed := rec.find("Failed to watch")
	if len(failed) == 0 {
		t.Fatal(`"Failed to watch" records: got none, want the cancelled watches at Debug (not routed through slog?)`)
	}
	for _, r := range failed {
		var cause error
		r.Attrs(func(a slog.Attr) bool {
			if err, ok := a.Value.Any().(error); ok {
				cause = err
			}
			return true
		})
		if !errors.Is(cause, context.Canceled) {
			t.Errorf("a watch failed with %v, want only cancelled ones", cause)
		}
		if r.Level != slog.LevelDebug {
			t.Errorf("cancelled watch logged at %v, want %v", r.Level, slog.LevelDebug)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, r := range rec.recs {
		if r.Level >= slog.LevelError {
			t.Errorf("error record %q, want none", r.Message)
		}
	}
}
