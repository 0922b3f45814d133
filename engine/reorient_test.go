package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	ort "github.com/yalue/onnxruntime_go"

	"github.com/voxserve/voxserve/internal/onnxbuild"
)

// runONNX runs a one-input, one-output float32 model on ONNX Runtime.
func runONNX(t *testing.T, model []byte, in, out string, shape []int64, x []float32) []float32 {
	t.Helper()
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(model, []string{in}, []string{out}, nil)
	require.NoError(t, err)
	defer s.Destroy()
	xt, err := ort.NewTensor(ort.NewShape(shape...), x)
	require.NoError(t, err)
	defer xt.Destroy()
	outs := []ort.Value{nil}
	require.NoError(t, s.Run([]ort.Value{xt}, outs))
	defer outs[0].Destroy()
	return append([]float32(nil), outs[0].(*ort.Tensor[float32]).GetData()...)
}

// TestReorient: a model that works in MONAI's [b, c, x, y, z] RAS arrays,
// wrapped by onnxbuild.Reorient, gives on voxserve's [b, c, z, y, x] LPS
// array exactly what the original gives on the same voxels laid out its
// way. The model depends on position (a ramp along its x axis, another
// along z), so a wrong flip or transpose shows.
func TestReorient(t *testing.T) {
	const nx, ny, nz = 4, 3, 2
	rampX := []float32{100, 200, 300, 400}
	m := onnxbuild.Model{
		Name:    "ras",
		Opset:   17,
		Inputs:  []onnxbuild.Value{{Name: "image", Type: onnxbuild.Float, Shape: []onnxbuild.Dim{{Param: "b"}, {Value: 1}, {Value: nx}, {Value: ny}, {Value: nz}}}},
		Outputs: []onnxbuild.Value{{Name: "pred", Type: onnxbuild.Float, Shape: []onnxbuild.Dim{{Param: "b"}, {Value: 1}, {Value: nx}, {Value: ny}, {Value: nz}}}},
		Initializers: []onnxbuild.Initializer{
			{Name: "rx", Dims: []int64{1, 1, nx, 1, 1}, Float32: rampX},
			{Name: "rz", Dims: []int64{1, 1, 1, 1, nz}, Float32: []float32{10000, 20000}},
		},
		Nodes: []onnxbuild.Node{
			{Op: "Add", Inputs: []string{"image", "rx"}, Outputs: []string{"a"}},
			{Op: "Add", Inputs: []string{"a", "rz"}, Outputs: []string{"pred"}},
		},
	}
	orig := m.Marshal()
	wrapped, err := onnxbuild.Reorient(orig, []string{"image"}, []string{"pred"})
	require.NoError(t, err)

	// The same voxels both ways: value = 1000*x + 10*y + z in LPS indices.
	ras := make([]float32, nx*ny*nz) // [x', y', z], x' = nx-1-x, y' = ny-1-y
	lps := make([]float32, nx*ny*nz) // [z, y, x]
	for z := 0; z < nz; z++ {
		for y := 0; y < ny; y++ {
			for x := 0; x < nx; x++ {
				v := float32(1*x + 10*y + 100*z)
				lps[(z*ny+y)*nx+x] = v
				ras[((nx-1-x)*ny+(ny-1-y))*nz+z] = v
			}
		}
	}
	wantRAS := runONNX(t, orig, "image", "pred", []int64{1, 1, nx, ny, nz}, ras)
	got := runONNX(t, wrapped, "image", "pred", []int64{1, 1, nz, ny, nx}, lps)
	for z := 0; z < nz; z++ {
		for y := 0; y < ny; y++ {
			for x := 0; x < nx; x++ {
				assert.Equal(t, wantRAS[((nx-1-x)*ny+(ny-1-y))*nz+z], got[(z*ny+y)*nx+x], "voxel x=%d y=%d z=%d", x, y, z)
			}
		}
	}
	// The patient's right (LPS x = 0) is MONAI's last x: the ramp's 400.
	assert.Equal(t, float32(400+10000), got[0])

	_, err = onnxbuild.Reorient(orig, []string{"nope"}, []string{"pred"})
	assert.ErrorContains(t, err, `no input "nope"`)
	_, err = onnxbuild.Reorient([]byte{0xff}, nil, nil)
	assert.Error(t, err)
}
