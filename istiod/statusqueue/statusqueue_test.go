package statusqueue_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ambitmesh/ambit/istiod/statusqueue"
)

// TestQueue: a set not yet taken is replaced by a newer one; the writer
// writes only changed statuses, takes back those gone, and writes again
// what failed to be written.
func TestQueue(t *testing.T) {
	q := statusqueue.New[string]()
	// Offered before the writer runs: only the second set is seen.
	q.Offer(map[string]string{"a": "1", "old": "x"})
	q.Offer(map[string]string{"a": "2", "b": "x"})

	events := make(chan string)
	failed := false
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Run(ctx, func(ctx context.Context, key, v string) error {
			events <- "write " + key + "=" + v
			if key == "f" && !failed {
				failed = true
				return errors.New("apiserver away")
			}
			return nil
		}, func(ctx context.Context, key string) {
			events <- "clear " + key
		})
	}()
	t.Cleanup(func() { cancel(); <-done })

	expect := func(step string, want ...string) {
		t.Helper()
		var got []string
		for range want {
			got = append(got, <-events)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: got %q, want %q", step, got, want)
		}
	}
	expect("first set", "write a=2", "write b=x")
	q.Offer(map[string]string{"a": "2", "c": "y", "f": "1"})
	expect("a unchanged, b gone", "write c=y", "write f=1", "clear b")
	q.Offer(map[string]string{"a": "3", "c": "y", "f": "1"})
	expect("f failed before, a changed", "write a=3", "write f=1")
	q.Offer(map[string]string{"a": "3", "c": "y", "f": "1", "z": "end"})
	// Run writes one set in order: anything written again would come
	// before z.
	expect("nothing else changed", "write z=end")
}
