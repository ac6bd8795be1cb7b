package ambient

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/tools/cache"
)

// RunDebounced waits until the handlers in regs have seen their
// informers' initial lists, calls synced (when not nil) and then flush
// after each burst of signals
// on dirty: once no signal came for quiet, or max after the burst began,
// whichever is first. It returns nil when ctx ends. Both istiod's ambient
// index and its waypoint controller run this way.
func RunDebounced(ctx context.Context, regs []cache.ResourceEventHandlerRegistration, dirty <-chan struct{}, quiet, max time.Duration, synced, flush func()) error {
	has := make([]cache.InformerSynced, 0, len(regs))
	for _, r := range regs {
		has = append(has, r.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), has...) {
		return fmt.Errorf("sync event handlers: %w", context.Cause(ctx))
	}
	if synced != nil {
		synced()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-dirty:
		}
		if !debounce(ctx, dirty, quiet, max) {
			return nil
		}
		flush()
	}
}

// debounce waits until no signal came on dirty for quiet, or max passed.
// It reports false when ctx ended first.
func debounce(ctx context.Context, dirty <-chan struct{}, quiet, max time.Duration) bool {
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	q := time.NewTimer(quiet)
	defer q.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-q.C:
			return true
		case <-dirty:
			q.Reset(quiet)
		}
	}
}
