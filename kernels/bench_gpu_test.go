//go:build cuda

package kernels

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/kernels/cuda"
	"github.com/voxserve/voxserve/preprocess"
)

// The GPU preprocessing benchmark of PRODUCT.md section 5: a 512x512x300
// int16 head CT (250 mm field of view, 0.625 mm slices: 0.488 x 0.488 x
// 0.625 mm), rescaled, resampled to 1 mm isotropic (250x250x188) and
// windowed into float32 channels, timed with device events. It reports the achieved bandwidth over the bytes the pass must
// move (the int16 input read once, the float32 output written once) and
// its ratio to the floor those bytes take at the device-to-device copy
// bandwidth measured in the same run.

var (
	ctDims    = [3]int{512, 512, 300}
	ctSpacing = [3]float64{250.0 / 512, 250.0 / 512, 0.625}
)

// ctMaps are the axis maps from the CT to 1 mm, and the output size.
func ctMaps() ([3]preprocess.AxisMap, [3]int) {
	var maps [3]preprocess.AxisMap
	var out [3]int
	for a := 0; a < 3; a++ {
		out[a] = preprocess.ResampleSize(ctDims[a], ctSpacing[a], 1)
		maps[a] = preprocess.NewAxisMap(out[a], ctDims[a], 1/ctSpacing[a], preprocess.Linear)
	}
	return maps, out
}

var copyBW struct {
	once sync.Once
	gbs  float64
}

// deviceCopyBandwidth measures cuMemcpyDtoD over 1 GiB, counting bytes
// read plus bytes written, median of 20.
func deviceCopyBandwidth(b *testing.B, g *GPU, s *cuda.Stream) float64 {
	copyBW.once.Do(func() {
		const n = 1 << 30
		src, err := g.Dev.Alloc(n)
		require.NoError(b, err)
		dst, err := g.Dev.Alloc(n)
		require.NoError(b, err)
		defer g.Dev.Free(src)
		defer g.Dev.Free(dst)
		require.NoError(b, g.Dev.Memset(src, 7, n, s))
		ms := timeEvents(b, g, s, 20, func() error { return g.Dev.Copy(dst, src, n, s) })
		copyBW.gbs = 2 * n / (ms * 1e6)
	})
	return copyBW.gbs
}

// timeEvents returns the median milliseconds of reps runs of f on s.
func timeEvents(b *testing.B, g *GPU, s *cuda.Stream, reps int, f func() error) float64 {
	e0, err := g.Dev.NewEvent()
	require.NoError(b, err)
	e1, err := g.Dev.NewEvent()
	require.NoError(b, err)
	defer g.Dev.DestroyEvent(e0)
	defer g.Dev.DestroyEvent(e1)
	require.NoError(b, f()) // warm-up
	times := make([]float64, reps)
	for i := range times {
		require.NoError(b, g.Dev.Record(e0, s))
		require.NoError(b, f())
		require.NoError(b, g.Dev.Record(e1, s))
		ms, err := g.Dev.Elapsed(e0, e1)
		require.NoError(b, err)
		times[i] = float64(ms)
	}
	return median(times)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func ctVolume() []int16 {
	r := rand.New(rand.NewPCG(1, 2))
	v := make([]int16, ctDims[0]*ctDims[1]*ctDims[2])
	for i := range v {
		v[i] = int16(r.IntN(3000)) // stored values; intercept -1024 makes HU
	}
	return v
}

func benchWindows(c int) []preprocess.Window {
	all := []preprocess.Window{{Center: 40, Width: 80}, {Center: 80, Width: 200}, {Center: 600, Width: 2800}}
	return all[:c]
}

func benchGPUPreprocess(b *testing.B, channels int) {
	g := openGPU(b)
	s, err := g.Dev.NewStream()
	require.NoError(b, err)
	defer g.Dev.DestroyStream(s)
	src := ctVolume()
	maps, out := ctMaps()
	dm, err := g.UploadMaps(maps)
	require.NoError(b, err)
	defer g.FreeMaps(dm)
	inBytes := len(src) * 2
	outBytes := channels * out[0] * out[1] * out[2] * 4
	dsrc, err := g.Dev.Alloc(inBytes)
	require.NoError(b, err)
	defer g.Dev.Free(dsrc)
	dout, err := g.Dev.Alloc(outBytes)
	require.NoError(b, err)
	defer g.Dev.Free(dout)
	require.NoError(b, g.Dev.CopyToDevice(dsrc, unsafe.Pointer(&src[0]), inBytes, s))
	require.NoError(b, g.Dev.Sync(s))
	bw := deviceCopyBandwidth(b, g, s)
	ws := benchWindows(channels)
	run := func() error { return g.WindowResampleI16Device(s, dsrc, ctDims, 1, -1024, dm, ws, dout) }
	b.ResetTimer()
	ms := timeEvents(b, g, s, max(b.N, 5), run)
	b.StopTimer()
	bytes := float64(inBytes + outBytes)
	floor := bytes / (bw * 1e6) // ms
	b.ReportMetric(ms, "device-ms")
	b.ReportMetric(bytes/(ms*1e6), "GB/s")
	b.ReportMetric(bw, "copy-GB/s")
	b.ReportMetric(ms/floor, "x-floor")
}

// BenchmarkGPUPreprocess3 is the ICH preprocessing: three windows.
func BenchmarkGPUPreprocess3(b *testing.B) { benchGPUPreprocess(b, 3) }

// BenchmarkGPUPreprocess1 writes one channel.
func BenchmarkGPUPreprocess1(b *testing.B) { benchGPUPreprocess(b, 1) }

// BenchmarkGPUPreprocessUpload adds the host-to-device copy of the int16
// volume from pinned memory: the whole cost of a study's pixels reaching
// the model input.
func BenchmarkGPUPreprocessUpload(b *testing.B) {
	g := openGPU(b)
	s, err := g.Dev.NewStream()
	require.NoError(b, err)
	defer g.Dev.DestroyStream(s)
	src := ctVolume()
	inBytes := len(src) * 2
	pinned, err := g.Dev.AllocHost(inBytes)
	require.NoError(b, err)
	defer g.Dev.FreeHost(pinned)
	copy(pinned, unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), inBytes))
	maps, out := ctMaps()
	dm, err := g.UploadMaps(maps)
	require.NoError(b, err)
	defer g.FreeMaps(dm)
	dsrc, err := g.Dev.Alloc(inBytes)
	require.NoError(b, err)
	defer g.Dev.Free(dsrc)
	dout, err := g.Dev.Alloc(3 * out[0] * out[1] * out[2] * 4)
	require.NoError(b, err)
	defer g.Dev.Free(dout)
	ws := benchWindows(3)
	b.ResetTimer()
	ms := timeEvents(b, g, s, max(b.N, 5), func() error {
		if err := g.Dev.CopyToDevice(dsrc, unsafe.Pointer(&pinned[0]), inBytes, s); err != nil {
			return err
		}
		return g.WindowResampleI16Device(s, dsrc, ctDims, 1, -1024, dm, ws, dout)
	})
	b.ReportMetric(ms, "device-ms")
	b.ReportMetric(float64(inBytes)/(ms*1e6), "upload-GB/s")
}

// BenchmarkCPUPreprocess3 is the Go reference on the same volume, all cores.
func BenchmarkCPUPreprocess3(b *testing.B) {
	src := ctVolume()
	maps, out := ctMaps()
	dst := make([]float32, 3*out[0]*out[1]*out[2])
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		require.NoError(b, CPU{}.WindowResampleI16(src, ctDims, 1, -1024, maps, benchWindows(3), dst))
	}
}
