//go:build !cuda

package kernels

import "fmt"

// GPU is the CUDA implementation; this binary was built without the cuda
// tag, so Open always reports ErrUnavailable.
type GPU struct{ CPU }

// Open reports that this build has no GPU implementation.
func Open(int) (*GPU, error) {
	return nil, fmt.Errorf("%w: built without the cuda tag", ErrUnavailable)
}

// Close does nothing.
func (*GPU) Close() error { return nil }
