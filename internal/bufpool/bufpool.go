// Package bufpool pools byte buffers by size class: a buffer is taken
// from the smallest class that holds what is asked, so that a small
// message does not hold a buffer made for a large one.
package bufpool

import "sync"

// Classes is a set of pools, one per buffer size.
type Classes struct {
	classes []class
}

type class struct {
	size int
	pool sync.Pool
}

// New makes the pools of the given sizes, smallest first.
func New(sizes ...int) *Classes {
	c := &Classes{classes: make([]class, len(sizes))}
	for i, n := range sizes {
		if i > 0 && n <= sizes[i-1] {
			panic("bufpool: sizes not increasing")
		}
		c.classes[i].size = n
	}
	return c
}

// Get is a buffer of at least n bytes: the smallest class's that holds
// n, whole (its length is the class's size), or a buffer of n bytes,
// not pooled, when n is larger than every class.
func (c *Classes) Get(n int) *[]byte {
	for i := range c.classes {
		cl := &c.classes[i]
		if n <= cl.size {
			if b, ok := cl.pool.Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, cl.size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

// Put gives b back to the pool of its size; a buffer of no class's size
// (Get's larger ones), and nil, are left to the garbage collector.
func (c *Classes) Put(b *[]byte) {
	if b == nil {
		return
	}
	for i := range c.classes {
		if cl := &c.classes[i]; cap(*b) == cl.size {
			*b = (*b)[:cl.size]
			cl.pool.Put(b)
			return
		}
	}
}
