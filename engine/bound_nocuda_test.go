//go:build !cuda

package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/bundle"
)

// A session on the GPU in a binary without the cuda tag cannot bind device
// memory: auto runs unbound and says why; on refuses the load.
func TestDeviceIOBindingNeedsCUDABuild(t *testing.T) {
	spec := &bundle.Spec{InstanceCount: 1, Inputs: []bundle.Input{{Name: "x", DataType: "float32", Dims: []int64{2}}}}
	sess := &session{provider: "cuda"}

	spec.Execution.IOBinding = "auto"
	ios, where, err := newInstanceIO(spec, sess, quietLog())
	require.NoError(t, err)
	assert.Nil(t, ios)
	assert.Contains(t, where, "off: device memory needs a binary built with the cuda tag")

	spec.Execution.IOBinding = "on"
	_, _, err = newInstanceIO(spec, sess, quietLog())
	assert.ErrorContains(t, err, "execution.io_binding: device memory needs a binary built with the cuda tag")
}
