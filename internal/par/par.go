// Package par splits loops across the machine's cores: the one place
// voxserve's CPU code goes parallel.
package par

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Range runs f over [0, n) in one contiguous chunk per core, for loops
// whose items cost about the same (voxels, rows).
func Range(n int, f func(lo, hi int)) { RangeGrain(n, 1, f) }

// RangeGrain is Range with at least grain items per chunk, so that small
// loops are not split into chunks cheaper than starting a goroutine.
func RangeGrain(n, grain int, f func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), max(n/max(grain, 1), 1))
	if workers <= 1 {
		if n > 0 {
			f(0, n)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			f(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	wg.Wait()
}

// Each runs f(i) for every i in [0, n) on all cores, handing items out one
// at a time, for items whose cost varies (slices to decode, frames to
// encode, slices to render).
func Each(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := 0; i < n; i++ {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				f(i)
			}
		}()
	}
	wg.Wait()
}
