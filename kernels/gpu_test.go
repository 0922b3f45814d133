//go:build cuda

package kernels

import (
	"errors"
	"os"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/kernels/cuda"
	"github.com/voxserve/voxserve/preprocess"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// openGPU opens device 0, or skips where there is none; VOXSERVE_REQUIRE_GPU=1
// (set on GPU machines) turns the skip into a failure.
func openGPU(tb testing.TB) *GPU {
	tb.Helper()
	g, err := Open(0)
	if errors.Is(err, ErrUnavailable) && os.Getenv("VOXSERVE_REQUIRE_GPU") == "" {
		tb.Skipf("no GPU: %v", err)
	}
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, g.Close()) })
	free, total, err := g.Dev.MemInfo()
	require.NoError(tb, err)
	tb.Logf("%s, compute capability %d, %d SMs, %d of %d MiB free", g.Dev.Name, g.Dev.Capability, g.Dev.SMs, free>>20, total>>20)
	return g
}

// TestGPUMatchesCPU checks every kernel against the Go reference.
func TestGPUMatchesCPU(t *testing.T) {
	checkOps(t, openGPU(t), !testing.Short())
}

// TestGPUMemoryReturned opens and closes the kernels and runs operations
// many times: the device's free memory must come back.
func TestGPUMemoryReturned(t *testing.T) {
	g := openGPU(t)
	free0, _, err := g.Dev.MemInfo()
	require.NoError(t, err)
	for i := 0; i < 50; i++ {
		lab := make([]uint8, 64*64*64)
		lab[i] = 1
		_, err := g.RemoveSmallComponents(lab, [3]int{64, 64, 64}, 2)
		require.NoError(t, err)
	}
	free1, _, err := g.Dev.MemInfo()
	require.NoError(t, err)
	require.InDelta(t, float64(free0), float64(free1), 4<<20, "free memory before %d, after %d", free0, free1)
}

// A volume decoded into page-locked memory HostFloat32s lends gives the
// same fused pass as Go memory, and the buffer is reused once given back.
func TestGPUHostFloat32s(t *testing.T) {
	g := openGPU(t)
	defer g.Close()
	dims := [3]int{96, 80, 40}
	n := dims[0] * dims[1] * dims[2]
	v, release := g.HostFloat32s(n)
	require.Len(t, v, n)
	goMem := make([]float32, n)
	for i := range v {
		v[i] = float32(i%2000) - 1000
		goMem[i] = v[i]
	}
	var maps [3]preprocess.AxisMap
	for a := 0; a < 3; a++ {
		maps[a] = preprocess.NewAxisMap(dims[a]/2, dims[a], 2, preprocess.Linear)
	}
	ws := []preprocess.Window{{Center: 40, Width: 80}, {Center: 600, Width: 2800}}
	out := dims[0] / 2 * (dims[1] / 2) * (dims[2] / 2) * len(ws)
	a, b := make([]float32, out), make([]float32, out)
	require.NoError(t, g.WindowResample(v, dims, maps, ws, a))
	require.NoError(t, g.WindowResample(goMem, dims, maps, ws, b))
	assert.Equal(t, b, a)
	// The same study as int16 stored values with their rescale, read by
	// the int16 kernel from page-locked memory.
	s, releaseS := g.HostInt16s(n)
	for i := range s {
		s[i] = int16(i%2000) - 1000 + 1024
	}
	c := make([]float32, out)
	require.NoError(t, g.WindowResampleI16(s, dims, 1, -1024, maps, ws, c))
	assert.Equal(t, b, c)
	releaseS()
	release()
	_, again := g.HostFloat32s(n)
	again()
	assert.Equal(t, int64(1), g.host.reuses)
}

// PrepareSlabs leaves on the device what the CPU makes of the same study
// through WindowResample, CropOrPad and SlabsTensor, exactly: from int16
// stored values and from float32, cropped on one axis and padded on the
// other, written as float32 and as float16.
func TestGPUPrepareSlabs(t *testing.T) {
	g := openGPU(t)
	defer g.Close()
	dims := [3]int{70, 50, 12}
	n := dims[0] * dims[1] * dims[2]
	s16 := make([]int16, n)
	f32 := make([]float32, n)
	for i := range s16 {
		s16[i] = int16((i*7919)%3000) - 1000 + 1024
		f32[i] = float32(s16[i]) - 1024
	}
	var maps [3]preprocess.AxisMap
	size := [3]int{dims[0] / 2, dims[1] / 2, dims[2] / 2}
	for a := 0; a < 3; a++ {
		maps[a] = preprocess.NewAxisMap(size[a], dims[a], 2, preprocess.Linear)
	}
	ws := []preprocess.Window{{Center: 40, Width: 80}, {Center: 600, Width: 2800}}
	ch := &preprocess.Channels{C: len(ws), NX: size[0], NY: size[1], NZ: size[2], V: make([]float32, len(ws)*size[0]*size[1]*size[2])}
	require.NoError(t, CPU{}.WindowResample(f32, dims, maps, ws, ch.V))
	rows, cols := 31, 28 // pad rows, crop columns
	lay := preprocess.SlabLayout{R: 1, Rows: rows, Cols: cols, OffX: (size[0] - cols) / 2, OffY: (size[1] - rows) / 2, Pad: -0.5}
	for _, half := range []bool{false, true} { // float32, or float16 for a half-precision model
		lay.Half = half
		want := lay.Bytes(preprocess.SlabsCropped(ch, lay))
		for _, from16 := range []bool{true, false} {
			var res preprocess.Resident
			var err error
			if from16 {
				res, err = g.PrepareSlabs(s16, nil, dims, 1, -1024, maps, ws, lay)
			} else {
				res, err = g.PrepareSlabs(nil, f32, dims, 0, 0, maps, ws, lay)
			}
			require.NoError(t, err)
			require.Equal(t, len(want), res.Len)
			got := make([]byte, len(want))
			require.NoError(t, g.ReadResident(got, res.DeviceBytes))
			res.Release()
			assert.Equal(t, want, got, "from int16: %v, float16: %v", from16, half)
		}
	}
}

// SourceLabelsResident labels a model output where the model wrote it,
// exactly as the CPU labels the same channels gathered on the host: a
// [z, C, y, x] batch of slices read through its strides, and sliding-window
// patch predictions stitched on the device. ReadResident gives the bytes
// back.
func TestGPUSourceLabelsResident(t *testing.T) {
	g := openGPU(t)
	r := newRand(t)
	grid := [3]int{24, 20, 9}
	patchSpec := preprocess.Spec{Layout: preprocess.LayoutPatches, PatchSize: [3]int{12, 12, 6}, Overlap: 0.5}
	for _, tc := range []struct {
		act     string
		c       int
		patches bool
	}{{"sigmoid", 1, false}, {"sigmoid", 2, false}, {"softmax", 3, false}, {"sigmoid", 1, true}, {"softmax", 2, true}} {
		p := &preprocess.Prepared{Spec: preprocess.Spec{Layout: preprocess.LayoutSlices}, ModelSize: grid}
		shape := []int64{9, int64(tc.c), 20, 24}
		n := tc.c * 24 * 20 * 9
		if tc.patches {
			p.Spec, p.Patches = patchSpec, preprocess.Patches(grid, patchSpec.PatchSize, patchSpec.Overlap)
			ps := patchSpec.PatchSize
			shape = []int64{int64(len(p.Patches)), int64(tc.c), int64(ps[2]), int64(ps[1]), int64(ps[0])}
			n = len(p.Patches) * tc.c * ps[0] * ps[1] * ps[2]
		}
		v := randF32(r, n, -3, 3)
		buf, err := g.ResidentBuffer(4 * len(v))
		require.NoError(t, err)
		s, err := g.Dev.NewStream()
		require.NoError(t, err)
		require.NoError(t, g.Dev.CopyToDevice(cuda.Ptr(buf.Addr), unsafe.Pointer(&v[0]), buf.Len, s))
		require.NoError(t, g.Dev.Sync(s))
		require.NoError(t, g.Dev.DestroyStream(s))
		out := &tensor.Tensor{Name: "mask", DType: tensor.Float32, Shape: shape, Device: &buf.DeviceBytes}
		rc, err := p.ResidentChannels(out)
		require.NoError(t, err)

		model := volume.Identity()
		model.Spacing = [3]float64{1.8, 1.8, 5}
		source := volume.Identity()
		source.Spacing = [3]float64{0.45, 0.5, 1.25}
		source.Origin = [3]float64{-1, 2, 0.5}
		size := [3]int{90, 70, 33}
		th := make([]float64, tc.c)
		for i := range th {
			th[i] = 0.3 + 0.4*r.Float64()
		}
		ch, err := rc.Gather(v)
		require.NoError(t, err)
		want, err := CPU{}.SourceLabels(ch, model, source, size, tc.act, th, 30)
		require.NoError(t, err)
		got, err := g.SourceLabelsResident(rc, model, source, size, tc.act, th, 30)
		require.NoError(t, err)
		assert.Equal(t, want, got, "%s x%d, patches %v", tc.act, tc.c, tc.patches)

		back := make([]byte, buf.Len)
		require.NoError(t, g.ReadResident(back, buf.DeviceBytes))
		assert.Equal(t, unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)), back)
		buf.Release()
	}
}

// PreparePatches leaves on the device the patches the CPU extracts from
// the same study (PatchesTensor), as float32 and float16, exactly.
func TestGPUPreparePatches(t *testing.T) {
	g := openGPU(t)
	dims := [3]int{40, 36, 14}
	n := dims[0] * dims[1] * dims[2]
	s16 := make([]int16, n)
	for i := range s16 {
		s16[i] = int16((i*7919)%3000) - 1000 + 1024
	}
	var maps [3]preprocess.AxisMap
	size := [3]int{30, 27, 10}
	for a := 0; a < 3; a++ {
		maps[a] = preprocess.NewAxisMap(size[a], dims[a], float64(dims[a])/float64(size[a]), preprocess.Linear)
	}
	ws := []preprocess.Window{{Center: 40, Width: 80}, {Center: 600, Width: 2800}}
	ch := &preprocess.Channels{C: len(ws), NX: size[0], NY: size[1], NZ: size[2], V: make([]float32, len(ws)*size[0]*size[1]*size[2])}
	require.NoError(t, CPU{}.WindowResampleI16(s16, dims, 1, -1024, maps, ws, ch.V))
	lay := preprocess.PatchLayout{Size: [3]int{16, 16, 8}, Pad: -0.5}
	lay.Patches = preprocess.Patches(size, lay.Size, 0.25)
	for _, half := range []bool{false, true} {
		lay.Half = half
		want := lay.Bytes(preprocess.PatchesTensor(ch, lay))
		res, err := g.PreparePatches(s16, nil, dims, 1, -1024, maps, ws, lay)
		require.NoError(t, err)
		require.Equal(t, len(want), res.Len)
		got := make([]byte, len(want))
		require.NoError(t, g.ReadResident(got, res.DeviceBytes))
		res.Release()
		assert.Equal(t, want, got, "float16: %v", half)
	}
}
