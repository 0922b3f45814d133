package kernels

import (
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSizeClass(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{1, 64 << 10}, {64 << 10, 64 << 10}, {64<<10 + 1, 72 << 10}, {100 << 10, 104 << 10},
		{1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 128<<10}, {300 << 20, 320 << 20},
	} {
		assert.Equal(t, tc.want, sizeClass(tc.n), "n=%d", tc.n)
	}
	for n := 1; n < 1<<26; n = n*3/2 + 7 {
		c := sizeClass(n)
		assert.GreaterOrEqual(t, c, n)
		if n > 64<<10 {
			assert.LessOrEqual(t, float64(c), float64(n)*1.125+1, "n=%d class=%d", n, c)
		}
	}
}

// fakeDevice hands out numbered buffers and can run out of memory.
type fakeDevice struct {
	mu          sync.Mutex
	next, live  int
	used, limit int64
	sizes       map[int]int64
}

func (d *fakeDevice) alloc(n int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.limit > 0 && d.used+int64(n) > d.limit {
		return 0, errors.New("CUDA_ERROR_OUT_OF_MEMORY")
	}
	d.next++
	d.live++
	d.used += int64(n)
	d.sizes[d.next] = int64(n)
	return d.next, nil
}

func (d *fakeDevice) release(b int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.sizes[b]; !ok {
		return errors.New("double free")
	}
	d.used -= d.sizes[b]
	delete(d.sizes, b)
	d.live--
	return nil
}

func TestPoolReusesBuffers(t *testing.T) {
	d := &fakeDevice{sizes: map[int]int64{}}
	p := newPool(64<<20, d.alloc, d.release)
	// A steady stream of requests of the same shapes allocates once.
	for i := 0; i < 100; i++ {
		a, ca, err := p.get(3 << 20)
		require.NoError(t, err)
		b, cb, err := p.get(100 << 10)
		require.NoError(t, err)
		require.NoError(t, p.put(a, ca))
		require.NoError(t, p.put(b, cb))
	}
	assert.Equal(t, int64(2), p.allocs)
	assert.Equal(t, int64(198), p.reuses)
	assert.Equal(t, 2, d.live)
	require.NoError(t, p.close())
	assert.Zero(t, d.live, "close frees every idle buffer")
}

func TestPoolLimitAndOutOfMemory(t *testing.T) {
	d := &fakeDevice{sizes: map[int]int64{}, limit: 10 << 20}
	p := newPool(4<<20, d.alloc, d.release)
	a, ca, err := p.get(3 << 20)
	require.NoError(t, err)
	b, cb, err := p.get(3 << 20)
	require.NoError(t, err)
	require.NoError(t, p.put(a, ca))
	require.NoError(t, p.put(b, cb)) // beyond the 4 MiB limit: freed, not kept
	assert.Equal(t, 1, d.live)
	// 8 MiB does not fit beside the idle 3 MiB: the pool frees its idle
	// buffers and tries again.
	c, cc, err := p.get(8 << 20)
	require.NoError(t, err)
	assert.Equal(t, 1, d.live)
	// Still too much: the error comes through.
	_, _, err = p.get(8 << 20)
	assert.ErrorContains(t, err, "OUT_OF_MEMORY")
	require.NoError(t, p.put(c, cc))
	require.NoError(t, p.close())
	assert.Zero(t, d.live)
}

func TestPoolConcurrent(t *testing.T) {
	d := &fakeDevice{sizes: map[int]int64{}}
	p := newPool(1<<30, d.alloc, d.release)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				b, c, err := p.get((w%4 + 1) << 20)
				if !assert.NoError(t, err) {
					return
				}
				assert.NoError(t, p.put(b, c))
			}
		}(w)
	}
	wg.Wait()
	assert.LessOrEqual(t, p.allocs, int64(16), "at most one buffer per concurrent caller")
	require.NoError(t, p.close())
	assert.Zero(t, d.live)
}
