package ortbind_test

import (
	"os"
	"reflect"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	ort "github.com/yalue/onnxruntime_go"

	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/engine/ortbind"
	"github.com/voxserve/voxserve/internal/onnxbuild"
)

var libPath string

func TestMain(m *testing.M) {
	p, err := engine.FindLibrary("")
	if err == nil {
		err = engine.Init(p)
	}
	if err == nil {
		err = ortbind.Load(p)
	}
	if err != nil {
		os.Stderr.WriteString("ortbind tests: " + err.Error() + "\n")
		os.Exit(1)
	}
	libPath = p
	os.Exit(m.Run())
}

// The binding pointer is read from IoBinding's only field; a new
// onnxruntime_go that changes the struct must fail here, not in a run.
func TestIoBindingLayout(t *testing.T) {
	typ := reflect.TypeOf(ort.IoBinding{})
	require.Equal(t, 1, typ.NumField(), "onnxruntime_go's IoBinding changed: update bindingPtr")
	f := typ.Field(0)
	assert.Equal(t, reflect.Pointer, f.Type.Kind())
	assert.Zero(t, f.Offset)
	assert.Equal(t, unsafe.Sizeof(uintptr(0)), typ.Size())
}

func TestLoad(t *testing.T) {
	require.NoError(t, ortbind.Load(libPath), "a second Load of the same library does nothing")
	assert.ErrorContains(t, ortbind.Load("/elsewhere/libonnxruntime.so.1"), "already bound")
}

// mapped returns n bytes outside Go's heap, as the engine's host arenas are.
func mapped(t *testing.T, n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Munmap(b) })
	return b
}

func floats(b []byte) []float32 { return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4) }

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// A session run through bound tensors reads its input from, and writes its
// output into, the memory we gave it.
func TestBoundRun(t *testing.T) {
	sess, err := ort.NewDynamicAdvancedSessionWithONNXData(onnxbuild.Affine([]int64{2, 3}, 2, 1).Marshal(), []string{"x"}, []string{"y"}, nil)
	require.NoError(t, err)
	defer sess.Destroy()
	mi, err := ortbind.NewMemoryInfo("Cpu", 0)
	require.NoError(t, err)
	defer mi.Close()

	in, out := mapped(t, 4096), mapped(t, 4096)
	shape := []int64{3, 2, 3}
	x, y := floats(in)[:18], floats(out)[:18]
	for i := range x {
		x[i] = float32(i) - 7
		y[i] = float32(999) // poisoned: the run must overwrite every value
	}
	xt, err := mi.NewTensor(addr(in), 18*4, shape, ort.TensorElementDataTypeFloat)
	require.NoError(t, err)
	defer xt.Release()
	yt, err := mi.NewTensor(addr(out), 18*4, shape, ort.TensorElementDataTypeFloat)
	require.NoError(t, err)
	defer yt.Release()

	b, err := sess.CreateIoBinding()
	require.NoError(t, err)
	defer b.Destroy()
	require.NoError(t, ortbind.BindInput(b, "x", xt))
	require.NoError(t, ortbind.BindOutput(b, "y", yt))
	for run := 0; run < 3; run++ { // the binding stays valid across runs
		x[0] = float32(run)
		require.NoError(t, sess.RunWithBinding(b))
		assert.Equal(t, 2*float32(run)+1, y[0])
		for i := 1; i < 18; i++ {
			assert.Equal(t, 2*x[i]+1, y[i], "element %d", i)
		}
	}
}

func TestErrors(t *testing.T) {
	mi, err := ortbind.NewMemoryInfo("Cpu", 0)
	require.NoError(t, err)
	defer mi.Close()
	buf := mapped(t, 64)

	_, err = mi.NewTensor(addr(buf), 64, nil, ort.TensorElementDataTypeFloat)
	assert.ErrorContains(t, err, "at least one dimension")
	_, err = mi.NewTensor(addr(buf), 8, []int64{4, 4}, ort.TensorElementDataTypeFloat)
	assert.ErrorContains(t, err, "CreateTensorWithDataAsOrtValue", "too few bytes for the shape")

	sess, err := ort.NewDynamicAdvancedSessionWithONNXData(onnxbuild.Affine([]int64{2, 3}, 2, 1).Marshal(), []string{"x"}, []string{"y"}, nil)
	require.NoError(t, err)
	defer sess.Destroy()
	b, err := sess.CreateIoBinding()
	require.NoError(t, err)
	tt, err := mi.NewTensor(addr(buf), 24, []int64{1, 2, 3}, ort.TensorElementDataTypeFloat)
	require.NoError(t, err)
	assert.ErrorContains(t, ortbind.BindInput(b, "nope", tt), "BindInput(nope)")
	tt.Release()
	assert.ErrorContains(t, ortbind.BindInput(b, "x", tt), "tensor released")
	require.NoError(t, b.Destroy())
	assert.ErrorContains(t, ortbind.BindInput(b, "x", tt), "binding destroyed")
}
