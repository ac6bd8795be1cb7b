package hbone

import (
	"sync"
)

// Pooled DATA payload buffers.

// Pools of DATA payload buffers by size class. The 4 KiB class is for
// the frames of small requests and responses (an HTTP/1 head with a
// 1 KiB body is about 1.3 KiB): in the 16 KiB class, each stream that
// waited on one held 12 KiB more than it needed (16 streams: 192 KiB of
// the waypoint's 3.4 MB live heap, twice that in its RSS).
var chunkPools = [...]struct {
	size int
	pool sync.Pool
}{{size: 1 << 10}, {size: 4 << 10}, {size: 16 << 10}, {size: maxFrameSize}}

func getChunk(n int) *[]byte {
	for i := range chunkPools {
		p := &chunkPools[i]
		if n <= p.size {
			if b, ok := p.pool.Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, p.size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

func putChunk(b *[]byte) {
	if b == nil {
		return
	}
	for i := range chunkPools {
		if p := &chunkPools[i]; cap(*b) == p.size {
			*b = (*b)[:p.size]
			p.pool.Put(b)
			return
		}
	}
}
