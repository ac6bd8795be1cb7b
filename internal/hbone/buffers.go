package hbone

import "github.com/ambitmesh/ambit/internal/bufpool"

// Pooled DATA payload buffers.

// Pools of DATA payload buffers by size class. The 4 KiB class is for
// the frames of small requests and responses (an HTTP/1 head with a
// 1 KiB body is about 1.3 KiB): in the 16 KiB class, each stream that
// waited on one held 12 KiB more than it needed (16 streams: 192 KiB of
// the waypoint's 3.4 MB live heap, twice that in its RSS).
var chunkPools = bufpool.New(1<<10, 4<<10, 16<<10, maxFrameSize)

func getChunk(n int) *[]byte { return chunkPools.Get(n) }

func putChunk(b *[]byte) { chunkPools.Put(b) }
