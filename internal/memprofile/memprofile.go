// Package memprofile turns Go's heap profiling off from the start of a
// program that imports it, unless the program turns it on (Enable, at
// the start of main: the waypoint's --heap-profiling).
//
// At Go's default rate the runtime records the stack of one allocation
// per 512 KiB allocated, in a hash table of stacks that it allocates at
// the first sample (1.4 MiB, most of it resident once a few hundred
// stacks are in it) and keeps for the life of the process: on the
// waypoint, about 1 MiB of its 32 MiB, and a stack walk per sample.
// Envoy's heap profiler is off unless asked for, too.
//
// Packages are initialized in import-path order among those whose
// imports are done (Go spec, "Package initialization"). This one
// imports only the runtime, so it runs before any package of the
// program allocates (GODEBUG=inittrace=1 shows it sixth, after 0
// bytes), and before the packages that register protobuf types, the
// allocations of start-up. The runtime still records one sample per P
// when it sees the rate change (malloc.go's profilealloc), which
// creates the table, but leaves all but a page or two of it
// untouched: at 1,000 req/s the waypoint's RSS went from 32.8 to 31.8
// MiB.
package memprofile

import "runtime"

// startRate is the rate the runtime started with: Go's default, or
// GODEBUG memprofilerate's.
var startRate = runtime.MemProfileRate

func init() { runtime.MemProfileRate = 0 }

// Enable turns heap profiling on at the rate the program started with.
// Call it once, at the start of main, as runtime.MemProfileRate asks.
func Enable() { runtime.MemProfileRate = startRate }
