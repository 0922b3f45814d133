package kernels

import (
	"fmt"
	"sync"
)

// lostLatch remembers the first error after which a device cannot be used
// again in this process (an illegal address, a failed launch: CUDA calls
// them sticky, and every later call in the context fails the same way),
// and tells whoever asked (OnLost) once. It is plain Go, tested without a
// GPU; kernels.GPU feeds it.
type lostLatch struct {
	mu    sync.Mutex
	err   error
	hooks []func(error)
}

// set records err if it is the first; the hooks run outside the lock.
func (l *lostLatch) set(err error) {
	l.mu.Lock()
	if l.err != nil || err == nil {
		l.mu.Unlock()
		return
	}
	l.err = err
	hooks := l.hooks
	l.mu.Unlock()
	for _, f := range hooks {
		f(err)
	}
}

// Lost is the error that lost the device, or nil.
func (l *lostLatch) Lost() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// OnLost calls f once the device is lost (at once if it already is).
func (l *lostLatch) OnLost(f func(error)) {
	l.mu.Lock()
	err := l.err
	if err == nil {
		l.hooks = append(l.hooks, f)
	}
	l.mu.Unlock()
	if err != nil {
		f(err)
	}
}

// refuse is the error for a call made after the device was lost: it fails
// at once, so that the caller falls back to the CPU without touching the
// device again.
func (l *lostLatch) refuse() error {
	if err := l.Lost(); err != nil {
		return fmt.Errorf("kernels: the device was lost earlier (%w); restart the process to use it", err)
	}
	return nil
}
