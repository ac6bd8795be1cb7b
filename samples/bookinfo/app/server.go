package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Attribute keys of the log records.
const (
	logService = "service"
	logMethod  = "method"
	logPath    = "path"
	logStatus  = "status"
	logURL     = "url"
	logErr     = "err"
	logAddr    = "addr"
	logVersion = "version"
)

// New returns the HTTP handler of the service cfg names.
func New(cfg Config, log *slog.Logger) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(logService, cfg.Service, logVersion, cfg.Version)
	var h http.Handler
	switch cfg.Service {
	case Productpage:
		h = NewProductpage(cfg, log)
	case Details:
		h = NewDetails()
	case Reviews:
		h = NewReviews(cfg, log)
	case Ratings:
		h = NewRatings()
	}
	return accessLog(h, log), nil
}

// Serve serves h on l until ctx ends, then shuts down gracefully.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- srv.Shutdown(sctx)
	}()
	log.Info("serving", logAddr, l.Addr().String())
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", l.Addr(), err)
	}
	if err := <-done; err != nil {
		return fmt.Errorf("shut down %s: %w", l.Addr(), err)
	}
	return nil
}

// ListenAndServe listens on addr and serves h until ctx ends.
func ListenAndServe(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return Serve(ctx, l, h, log)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// accessLog logs each request at debug level, and answers of 500 and more
// at warn.
func accessLog(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		level := slog.LevelDebug
		if rec.status >= 500 {
			level = slog.LevelWarn
		}
		log.Log(r.Context(), level, "request", logMethod, r.Method, logPath, r.URL.Path, logStatus, rec.status)
	})
}

// newClient returns the client of calls to other services. Like Istio's
// Bookinfo it opens a connection per call, so that calls spread over all
// the pods (and versions) behind a Service, and a policy change applies to
// the next call; keep-alive would pin them to one connection. It ignores
// proxy settings: calls go to the Services themselves.
func newClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// errorBody is the error answer of every Bookinfo service.
type errorBody struct {
	Error string `json:"error"`
}

// statusBody is the answer of the JSON health checks.
type statusBody struct {
	Status string `json:"status"`
}
