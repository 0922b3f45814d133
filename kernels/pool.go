package kernels

import (
	"errors"
	"math/bits"
	"sync"
)

// pool caches device buffers by size class, so that a steady stream of
// requests allocates nothing on the hot path: cuMemAlloc and cuMemFree
// cost tens of microseconds to milliseconds, and cuMemFree synchronizes
// the device, serializing requests that should overlap. A buffer a call
// releases is kept for the next call that needs its class, up to limit
// bytes held; beyond that it is freed. The limit is set when the device
// opens (a share of its memory). Plain Go over an allocator, so that CI
// tests it without a GPU.
type pool[B any] struct {
	mu      sync.Mutex
	free    map[int][]B // class bytes -> idle buffers
	held    int64       // bytes idle in free
	limit   int64
	alloc   func(n int) (B, error)
	release func(B) error
	// Counters, for tests and metrics: allocations made, and reuses.
	allocs, reuses int64
}

func newPool[B any](limit int64, alloc func(int) (B, error), release func(B) error) *pool[B] {
	return &pool[B]{free: map[int][]B{}, limit: limit, alloc: alloc, release: release}
}

// sizeClass rounds n up to a class: below 64 KiB, 64 KiB; above, eight
// classes per power of two, so a buffer is at most 12.5 % larger than
// asked for.
func sizeClass(n int) int {
	const minClass = 64 << 10
	if n <= minClass {
		return minClass
	}
	step := 1 << (bits.Len(uint(n-1)) - 4) // a sixteenth of the next power of two: an eighth of the one below n
	return (n + step - 1) / step * step
}

// get returns a buffer of at least n bytes and its class.
func (p *pool[B]) get(n int) (B, int, error) {
	class := sizeClass(n)
	p.mu.Lock()
	if bs := p.free[class]; len(bs) > 0 {
		b := bs[len(bs)-1]
		p.free[class] = bs[:len(bs)-1]
		p.held -= int64(class)
		p.reuses++
		p.mu.Unlock()
		return b, class, nil
	}
	p.allocs++
	p.mu.Unlock()
	b, err := p.alloc(class)
	if err != nil {
		// Out of memory with idle buffers of other classes: give them
		// back and try once more.
		if p.trim() > 0 {
			b, err = p.alloc(class)
		}
	}
	return b, class, err
}

// put keeps b for reuse, or frees it when the pool holds its limit.
func (p *pool[B]) put(b B, class int) error {
	p.mu.Lock()
	if p.held+int64(class) > p.limit {
		p.mu.Unlock()
		return p.release(b)
	}
	p.free[class] = append(p.free[class], b)
	p.held += int64(class)
	p.mu.Unlock()
	return nil
}

// trim frees every idle buffer (best effort: the caller's next allocation
// decides) and returns how many bytes it freed.
func (p *pool[B]) trim() int64 {
	held, _ := p.freeIdle()
	return held
}

// close frees the idle buffers; it reports release errors.
func (p *pool[B]) close() error {
	_, err := p.freeIdle()
	return err
}

// freeIdle hands every idle buffer back to the allocator.
func (p *pool[B]) freeIdle() (held int64, err error) {
	p.mu.Lock()
	free, held := p.free, p.held
	p.free, p.held = map[int][]B{}, 0
	p.mu.Unlock()
	for _, bs := range free {
		for _, b := range bs {
			err = errors.Join(err, p.release(b))
		}
	}
	return held, err
}
