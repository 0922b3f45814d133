//go:build !cuda

package engine

import "errors"

// newDeviceMemory needs the CUDA driver binding, which only the cuda
// build has.
func newDeviceMemory(int) (ioMemory, error) {
	return nil, errors.New("device memory needs a binary built with the cuda tag (make build-cuda)")
}
