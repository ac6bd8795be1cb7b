// Package statusqueue carries the statuses istiod computes on its push
// path to the goroutine that writes them to the API server, so that a
// slow API server never delays a push: the push path offers the newest
// complete set and never blocks (a set not yet taken is replaced); the
// writer writes only what changed since its last successful write and
// takes back what is no longer in the set.
package statusqueue

import "context"

// Queue holds the newest statuses by key ("Kind/namespace/name") and
// what its writer last wrote.
type Queue[V comparable] struct {
	latest  chan map[string]V
	written map[string]V // owned by Run's goroutine
}

// New returns an empty queue.
func New[V comparable]() *Queue[V] {
	return &Queue[V]{latest: make(chan map[string]V, 1), written: map[string]V{}}
}

// Offer hands over the newest complete statuses, replacing any not yet
// taken; it never blocks.
func (q *Queue[V]) Offer(st map[string]V) {
	for {
		select {
		case q.latest <- st:
			return
		default:
		}
		select {
		case <-q.latest:
		default:
		}
	}
}

// Run takes the offered statuses until ctx ends. It calls write for each
// key whose status differs from the last one written (an error: not
// written, tried again with the next set), and clear once for each key
// written before that the newest set no longer has.
func (q *Queue[V]) Run(ctx context.Context, write func(ctx context.Context, key string, v V) error, clear func(ctx context.Context, key string)) {
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-q.latest:
			for key, v := range st {
				if old, ok := q.written[key]; ok && old == v {
					continue
				}
				if err := write(ctx, key, v); err != nil {
					continue
				}
				q.written[key] = v
			}
			for key := range q.written {
				if _, ok := st[key]; !ok {
					clear(ctx, key)
					delete(q.written, key)
				}
			}
		}
	}
}
