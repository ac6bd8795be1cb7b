// Package tracker keeps what a listener has open (connections, tunnels)
// so that shutting down drains it: new ones are refused, open ones are
// asked to stop and given until a deadline to end, and what is left is
// then closed. Every listener of the data plane drains through it.
package tracker

import (
	"context"
	"sync"
)

// Tracker is a set of open items. The zero value is ready to use.
type Tracker[T comparable] struct {
	mu       sync.Mutex
	items    map[T]struct{}
	shutdown bool
	// empty is closed once the set is empty after shutdown.
	empty chan struct{}
}

// Add adds x; once Shutdown began it adds nothing and returns false.
func (t *Tracker[T]) Add(x T) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shutdown {
		return false
	}
	if t.items == nil {
		t.items = map[T]struct{}{}
	}
	t.items[x] = struct{}{}
	return true
}

// Remove removes x, which has ended.
func (t *Tracker[T]) Remove(x T) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.items, x)
	if t.shutdown && len(t.items) == 0 && t.empty != nil {
		close(t.empty)
		t.empty = nil
	}
}

// Len is the number of open items.
func (t *Tracker[T]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.items)
}

// Items returns the open items.
func (t *Tracker[T]) Items() []T {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.itemsLocked()
}

func (t *Tracker[T]) itemsLocked() []T {
	items := make([]T, 0, len(t.items))
	for x := range t.items {
		items = append(items, x)
	}
	return items
}

// Stop refuses new items from now on and returns the open ones (for a
// caller that closes them at once).
func (t *Tracker[T]) Stop() []T {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.shutdown = true
	return t.itemsLocked()
}

// Shutdown refuses new items, calls stop (when not nil) with each open
// one, and waits until they have all been removed or ctx is done. Then
// it calls kill with each one left, waits until those are removed too,
// and returns ctx's error; nil when all ended in time.
func (t *Tracker[T]) Shutdown(ctx context.Context, stop, kill func(T)) error {
	t.mu.Lock()
	t.shutdown = true
	items := t.itemsLocked()
	if len(items) > 0 && t.empty == nil {
		t.empty = make(chan struct{})
	}
	empty := t.empty
	t.mu.Unlock()
	if stop != nil {
		for _, x := range items {
			stop(x)
		}
	}
	if empty == nil {
		return nil
	}
	select {
	case <-empty:
		return nil
	case <-ctx.Done():
	}
	for _, x := range t.Items() {
		kill(x)
	}
	<-empty
	return ctx.Err()
}
