// Package kubelog routes the Kubernetes client libraries' logs (klog,
// through which client-go writes) into a component's slog handler, so that
// they come out in the component's format, at slog levels, and only at the
// levels the component shows. Without it klog writes its own lines to
// stderr: every informer stopped at shutdown printed an
// `E1202 ... reflector.go ... "Failed to watch" err="context canceled"`
// error.
//
// Levels: klog's errors are slog errors; its info is slog info, and its
// verbose info V(n) is slog level -n (from V(4), slog's Debug: client-go's
// chatter stays out of a component's Info output). An error caused by a
// cancelled context is not an error: the watch or request was stopped by
// its own component, which is shutting down or no longer needs it. It is
// logged at Debug.
//
// klog is one per process: a component's main calls Route once, early.
package kubelog

import (
	"context"
	"errors"
	"log/slog"

	"k8s.io/klog/v2"
)

// Component is the value of the "component" attribute of klog's records.
const Component = "client-go"

// Route sends klog's output to h from now on (see the package doc for
// levels), with the attribute component=client-go.
func Route(h slog.Handler) {
	klog.SetSlogLogger(slog.New(handler{h.WithAttrs([]slog.Attr{slog.String("component", Component)})}))
}

// handler lowers errors caused by a cancelled context to Debug.
type handler struct{ next slog.Handler }

// Enabled is the next handler's: a record that is lowered is checked
// again in Handle.
func (h handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError && cancelled(r) {
		if !h.next.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r = r.Clone()
		r.Level = slog.LevelDebug
	}
	return h.next.Handle(ctx, r)
}

func (h handler) WithAttrs(as []slog.Attr) slog.Handler { return handler{h.next.WithAttrs(as)} }
func (h handler) WithGroup(name string) slog.Handler    { return handler{h.next.WithGroup(name)} }

// cancelled reports whether a record carries an error (logr's "err"
// attribute, or any attribute holding an error) caused by a cancelled
// context.
func cancelled(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && errors.Is(err, context.Canceled) {
			found = true
			return false
		}
		return true
	})
	return found
}
