package kernels

import (
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The first fatal error is kept and reported once to every hook, also to
// hooks that arrive later; later calls are refused with it.
func TestLostLatch(t *testing.T) {
	var l lostLatch
	assert.NoError(t, l.refuse())
	var mu sync.Mutex
	var seen []error
	hook := func(err error) { mu.Lock(); seen = append(seen, err); mu.Unlock() }
	l.OnLost(hook)
	first, second := errors.New("illegal address"), errors.New("launch failed")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); l.set(first) }()
	}
	wg.Wait()
	l.set(second)
	l.set(nil)
	assert.Equal(t, first, l.Lost())
	l.OnLost(hook)
	assert.Equal(t, []error{first, first}, seen, "once per hook, the late one at once")
	assert.ErrorIs(t, l.refuse(), first)
	assert.ErrorContains(t, l.refuse(), "restart the process")
}
