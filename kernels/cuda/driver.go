//go:build cuda

// Package cuda is voxserve's whole cgo boundary to the GPU: a thin binding
// of the CUDA driver API (contexts, memory, streams, events, modules,
// launches), and nothing else.
//
// The driver library is opened with dlopen at run time instead of linked,
// as ollama does: one binary then starts on machines with and without a
// GPU, and reports "no driver" instead of failing to load. For the same
// reason it does not use gorgonia.org/cu, which links -lcuda at build time
// (so a binary built with it cannot start where libcuda.so.1 is absent,
// and CI, which has no driver, could not link it) and predates CUDA 13's
// renamed entry points (cuCtxCreate_v4, cuEventElapsedTime_v2). cuda.h is
// still included, from NVIDIA's CUDA headers, so that every type here is
// the driver's own.
//
// Every call makes the device's primary context current on the calling OS
// thread first, inside the same cgo call, since goroutines move between
// threads.
package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <cuda.h>

static struct {
	CUresult (*Init)(unsigned int);
	CUresult (*DriverGetVersion)(int *);
	CUresult (*DeviceGet)(CUdevice *, int);
	CUresult (*DeviceGetCount)(int *);
	CUresult (*DeviceGetName)(char *, int, CUdevice);
	CUresult (*DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
	CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
	CUresult (*DevicePrimaryCtxRelease)(CUdevice);
	CUresult (*CtxSetCurrent)(CUcontext);
	CUresult (*ModuleLoadData)(CUmodule *, const void *);
	CUresult (*ModuleUnload)(CUmodule);
	CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
	CUresult (*MemAlloc)(CUdeviceptr *, size_t);
	CUresult (*MemFree)(CUdeviceptr);
	CUresult (*MemAllocHost)(void **, size_t);
	CUresult (*MemFreeHost)(void *);
	CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
	CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
	CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
	CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
	CUresult (*MemGetInfo)(size_t *, size_t *);
	CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
	                         unsigned, CUstream, void **, void **);
	CUresult (*StreamCreate)(CUstream *, unsigned int);
	CUresult (*StreamDestroy)(CUstream);
	CUresult (*StreamSynchronize)(CUstream);
	CUresult (*EventCreate)(CUevent *, unsigned int);
	CUresult (*EventDestroy)(CUevent);
	CUresult (*EventRecord)(CUevent, CUstream);
	CUresult (*EventSynchronize)(CUevent);
	CUresult (*EventElapsedTime)(float *, CUevent, CUevent);
	CUresult (*GetErrorName)(CUresult, const char **);
} vox_cu;

// vox_cu_load opens the driver and resolves every entry point; it returns
// the name of the first one missing, or NULL.
static const char *vox_cu_load(void) {
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) return "libcuda.so.1";
#define SYM(field, name) if (!(*(void **)&vox_cu.field = dlsym(h, name))) return name
#define SYM2(field, name, old) if (!(*(void **)&vox_cu.field = dlsym(h, name)) && \
	!(*(void **)&vox_cu.field = dlsym(h, old))) return name
	SYM(Init, "cuInit");
	SYM(DriverGetVersion, "cuDriverGetVersion");
	SYM(DeviceGet, "cuDeviceGet");
	SYM(DeviceGetCount, "cuDeviceGetCount");
	SYM(DeviceGetName, "cuDeviceGetName");
	SYM(DeviceGetAttribute, "cuDeviceGetAttribute");
	SYM(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
	SYM(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
	SYM(CtxSetCurrent, "cuCtxSetCurrent");
	SYM(ModuleLoadData, "cuModuleLoadData");
	SYM(ModuleUnload, "cuModuleUnload");
	SYM(ModuleGetFunction, "cuModuleGetFunction");
	SYM(MemAlloc, "cuMemAlloc_v2");
	SYM(MemFree, "cuMemFree_v2");
	SYM(MemAllocHost, "cuMemAllocHost_v2");
	SYM(MemFreeHost, "cuMemFreeHost");
	SYM(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
	SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
	SYM(MemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2");
	SYM(MemsetD8Async, "cuMemsetD8Async");
	SYM(MemGetInfo, "cuMemGetInfo_v2");
	SYM(LaunchKernel, "cuLaunchKernel");
	SYM(StreamCreate, "cuStreamCreate");
	SYM(StreamDestroy, "cuStreamDestroy_v2");
	SYM(StreamSynchronize, "cuStreamSynchronize");
	SYM(EventCreate, "cuEventCreate");
	SYM(EventDestroy, "cuEventDestroy_v2");
	SYM(EventRecord, "cuEventRecord");
	SYM(EventSynchronize, "cuEventSynchronize");
	SYM2(EventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime");
	SYM(GetErrorName, "cuGetErrorName");
#undef SYM
#undef SYM2
	return NULL;
}

static const char *vox_err_name(CUresult r) {
	const char *s = NULL;
	if (vox_cu.GetErrorName == NULL || vox_cu.GetErrorName(r, &s) != CUDA_SUCCESS || s == NULL) return "CUDA_ERROR_UNKNOWN";
	return s;
}

#define CUR(ctx) do { CUresult r_ = vox_cu.CtxSetCurrent(ctx); if (r_ != CUDA_SUCCESS) return r_; } while (0)

static CUresult vox_init(void) { return vox_cu.Init(0); }
static CUresult vox_driver_version(int *v) { return vox_cu.DriverGetVersion(v); }
static CUresult vox_device_count(int *n) { return vox_cu.DeviceGetCount(n); }

static CUresult vox_open(int ordinal, CUdevice *dev, CUcontext *ctx, char *name, int *sms, int *cc) {
	CUresult r;
	if ((r = vox_cu.DeviceGet(dev, ordinal)) != CUDA_SUCCESS) return r;
	if ((r = vox_cu.DeviceGetName(name, 255, *dev)) != CUDA_SUCCESS) return r;
	if ((r = vox_cu.DeviceGetAttribute(sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, *dev)) != CUDA_SUCCESS) return r;
	int major = 0, minor = 0;
	if ((r = vox_cu.DeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, *dev)) != CUDA_SUCCESS) return r;
	if ((r = vox_cu.DeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, *dev)) != CUDA_SUCCESS) return r;
	*cc = major * 10 + minor;
	return vox_cu.DevicePrimaryCtxRetain(ctx, *dev);
}

static CUresult vox_close(CUdevice dev) { return vox_cu.DevicePrimaryCtxRelease(dev); }
static CUresult vox_mem_info(CUcontext ctx, size_t *free, size_t *total) { CUR(ctx); return vox_cu.MemGetInfo(free, total); }
static CUresult vox_alloc(CUcontext ctx, CUdeviceptr *p, size_t n) { CUR(ctx); return vox_cu.MemAlloc(p, n); }
static CUresult vox_free(CUcontext ctx, CUdeviceptr p) { CUR(ctx); return vox_cu.MemFree(p); }
static CUresult vox_alloc_host(CUcontext ctx, void **p, size_t n) { CUR(ctx); return vox_cu.MemAllocHost(p, n); }
static CUresult vox_free_host(CUcontext ctx, void *p) { CUR(ctx); return vox_cu.MemFreeHost(p); }
static CUresult vox_htod(CUcontext ctx, CUdeviceptr d, const void *h, size_t n, CUstream s) { CUR(ctx); return vox_cu.MemcpyHtoDAsync(d, h, n, s); }
static CUresult vox_dtoh(CUcontext ctx, void *h, CUdeviceptr d, size_t n, CUstream s) { CUR(ctx); return vox_cu.MemcpyDtoHAsync(h, d, n, s); }
static CUresult vox_dtod(CUcontext ctx, CUdeviceptr d, CUdeviceptr src, size_t n, CUstream s) { CUR(ctx); return vox_cu.MemcpyDtoDAsync(d, src, n, s); }
static CUresult vox_memset(CUcontext ctx, CUdeviceptr d, unsigned char v, size_t n, CUstream s) { CUR(ctx); return vox_cu.MemsetD8Async(d, v, n, s); }
static CUresult vox_module_load(CUcontext ctx, CUmodule *m, const void *image) { CUR(ctx); return vox_cu.ModuleLoadData(m, image); }
static CUresult vox_module_unload(CUcontext ctx, CUmodule m) { CUR(ctx); return vox_cu.ModuleUnload(m); }
static CUresult vox_function(CUcontext ctx, CUfunction *f, CUmodule m, const char *name) { CUR(ctx); return vox_cu.ModuleGetFunction(f, m, name); }
static CUresult vox_stream_create(CUcontext ctx, CUstream *s) { CUR(ctx); return vox_cu.StreamCreate(s, CU_STREAM_NON_BLOCKING); }
static CUresult vox_stream_destroy(CUcontext ctx, CUstream s) { CUR(ctx); return vox_cu.StreamDestroy(s); }
static CUresult vox_stream_sync(CUcontext ctx, CUstream s) { CUR(ctx); return vox_cu.StreamSynchronize(s); }
static CUresult vox_event_create(CUcontext ctx, CUevent *e) { CUR(ctx); return vox_cu.EventCreate(e, CU_EVENT_DEFAULT); }
static CUresult vox_event_destroy(CUcontext ctx, CUevent e) { CUR(ctx); return vox_cu.EventDestroy(e); }
static CUresult vox_event_record(CUcontext ctx, CUevent e, CUstream s) { CUR(ctx); return vox_cu.EventRecord(e, s); }
static CUresult vox_event_elapsed(CUcontext ctx, float *ms, CUevent a, CUevent b) {
	CUR(ctx);
	CUresult r = vox_cu.EventSynchronize(b);
	if (r != CUDA_SUCCESS) return r;
	return vox_cu.EventElapsedTime(ms, a, b);
}

// vox_launch launches f with nargs parameters packed in buf at offs.
static CUresult vox_launch(CUcontext ctx, CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                           unsigned bx, CUstream s, char *buf, const int *offs, int nargs) {
	void *params[64];
	if (nargs > 64) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < nargs; i++) params[i] = buf + offs[i];
	CUR(ctx);
	return vox_cu.LaunchKernel(f, gx, gy, gz, bx, 1, 1, 0, s, params, NULL);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// ErrNoDriver says the CUDA driver library could not be loaded: no GPU here.
var ErrNoDriver = errors.New("cuda: driver library libcuda.so.1 not found")

// Error is a failed driver call.
type Error struct {
	Op   string
	Code int
	Name string
}

func (e *Error) Error() string { return fmt.Sprintf("cuda: %s: %s (%d)", e.Op, e.Name, e.Code) }

// IsOutOfMemory says whether err is the driver's out-of-memory error.
func IsOutOfMemory(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == C.CUDA_ERROR_OUT_OF_MEMORY
}

// IsFatal says whether err leaves the context unusable: CUDA's "sticky"
// errors (an illegal address, a failed or timed-out launch, a device-side
// assert, an uncorrectable ECC error), after which every call in the
// process fails the same way until it restarts.
func IsFatal(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case C.CUDA_ERROR_ILLEGAL_ADDRESS, C.CUDA_ERROR_LAUNCH_TIMEOUT, C.CUDA_ERROR_ASSERT,
		C.CUDA_ERROR_HARDWARE_STACK_ERROR, C.CUDA_ERROR_ILLEGAL_INSTRUCTION, C.CUDA_ERROR_MISALIGNED_ADDRESS,
		C.CUDA_ERROR_INVALID_ADDRESS_SPACE, C.CUDA_ERROR_INVALID_PC, C.CUDA_ERROR_LAUNCH_FAILED,
		C.CUDA_ERROR_ECC_UNCORRECTABLE:
		return true
	}
	return false
}

func check(op string, r C.CUresult) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return &Error{Op: op, Code: int(r), Name: C.GoString(C.vox_err_name(r))}
}

var (
	loadOnce sync.Once
	loadErr  error
)

// Load opens the driver and initialises it, once per process.
func Load() error {
	loadOnce.Do(func() {
		if missing := C.vox_cu_load(); missing != nil {
			name := C.GoString(missing)
			if name == "libcuda.so.1" {
				loadErr = ErrNoDriver
				return
			}
			loadErr = fmt.Errorf("cuda: driver lacks %s (driver too old?)", name)
			return
		}
		loadErr = check("cuInit", C.vox_init())
	})
	return loadErr
}

// DriverVersion is the driver's CUDA version, e.g. 13000 for 13.0.
func DriverVersion() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var v C.int
	return int(v), check("cuDriverGetVersion", C.vox_driver_version(&v))
}

// DeviceCount is the number of GPUs the driver sees.
func DeviceCount() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var n C.int
	return int(n), check("cuDeviceGetCount", C.vox_device_count(&n))
}

// Device is one GPU with its primary context retained.
type Device struct {
	dev C.CUdevice
	ctx C.CUcontext
	// Name is the device's name, SMs its multiprocessor count, and
	// Capability its compute capability as major*10 + minor.
	Name       string
	SMs        int
	Capability int
	// Ordinal is the device's index, as Open took it.
	Ordinal int
}

// Open retains GPU ordinal's primary context.
func Open(ordinal int) (*Device, error) {
	if err := Load(); err != nil {
		return nil, err
	}
	d := &Device{}
	var name [256]C.char
	var sms, cc C.int
	if err := check("open device", C.vox_open(C.int(ordinal), &d.dev, &d.ctx, &name[0], &sms, &cc)); err != nil {
		return nil, err
	}
	d.Name, d.SMs, d.Capability, d.Ordinal = C.GoString(&name[0]), int(sms), int(cc), ordinal
	return d, nil
}

// Close releases the primary context.
func (d *Device) Close() error { return check("cuDevicePrimaryCtxRelease", C.vox_close(d.dev)) }

// MemInfo returns the device's free and total memory in bytes.
func (d *Device) MemInfo() (free, total uint64, err error) {
	var f, t C.size_t
	err = check("cuMemGetInfo", C.vox_mem_info(d.ctx, &f, &t))
	return uint64(f), uint64(t), err
}

// Ptr is a device address.
type Ptr uint64

// Alloc allocates n bytes of device memory.
func (d *Device) Alloc(n int) (Ptr, error) {
	var p C.CUdeviceptr
	err := check(fmt.Sprintf("cuMemAlloc(%d bytes)", n), C.vox_alloc(d.ctx, &p, C.size_t(n)))
	return Ptr(p), err
}

// Free frees device memory from Alloc.
func (d *Device) Free(p Ptr) error { return check("cuMemFree", C.vox_free(d.ctx, C.CUdeviceptr(p))) }

// AllocHost allocates n bytes of page-locked host memory, which copies
// reach at full speed and asynchronously.
func (d *Device) AllocHost(n int) ([]byte, error) {
	var p unsafe.Pointer
	if err := check(fmt.Sprintf("cuMemAllocHost(%d bytes)", n), C.vox_alloc_host(d.ctx, &p, C.size_t(n))); err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), n), nil
}

// FreeHost frees memory from AllocHost.
func (d *Device) FreeHost(b []byte) error {
	return check("cuMemFreeHost", C.vox_free_host(d.ctx, unsafe.Pointer(unsafe.SliceData(b))))
}

// Stream is a CUDA stream: work on one runs in order, and overlaps work on others.
type Stream struct{ s C.CUstream }

// NewStream creates a non-blocking stream.
func (d *Device) NewStream() (*Stream, error) {
	s := &Stream{}
	return s, check("cuStreamCreate", C.vox_stream_create(d.ctx, &s.s))
}

// DestroyStream destroys s after its work completes.
func (d *Device) DestroyStream(s *Stream) error {
	return check("cuStreamDestroy", C.vox_stream_destroy(d.ctx, s.s))
}

// Sync waits for s's work.
func (d *Device) Sync(s *Stream) error {
	return check("cuStreamSynchronize", C.vox_stream_sync(d.ctx, s.s))
}

// CopyToDevice copies n bytes from host address h to dst on s. h must stay
// valid until the stream reaches the copy: pinned memory, or a Go slice
// with a Sync before it is touched again.
func (d *Device) CopyToDevice(dst Ptr, h unsafe.Pointer, n int, s *Stream) error {
	return check("cuMemcpyHtoDAsync", C.vox_htod(d.ctx, C.CUdeviceptr(dst), h, C.size_t(n), s.s))
}

// CopyToHost copies n bytes from src to host address h on s.
func (d *Device) CopyToHost(h unsafe.Pointer, src Ptr, n int, s *Stream) error {
	return check("cuMemcpyDtoHAsync", C.vox_dtoh(d.ctx, h, C.CUdeviceptr(src), C.size_t(n), s.s))
}

// Copy copies n bytes between device buffers on s.
func (d *Device) Copy(dst, src Ptr, n int, s *Stream) error {
	return check("cuMemcpyDtoDAsync", C.vox_dtod(d.ctx, C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), s.s))
}

// Memset sets n bytes at p to v on s.
func (d *Device) Memset(p Ptr, v byte, n int, s *Stream) error {
	return check("cuMemsetD8Async", C.vox_memset(d.ctx, C.CUdeviceptr(p), C.uchar(v), C.size_t(n), s.s))
}

// Event marks a point in a stream, for timing.
type Event struct{ e C.CUevent }

// NewEvent creates an event.
func (d *Device) NewEvent() (*Event, error) {
	e := &Event{}
	return e, check("cuEventCreate", C.vox_event_create(d.ctx, &e.e))
}

// DestroyEvent destroys e.
func (d *Device) DestroyEvent(e *Event) error {
	return check("cuEventDestroy", C.vox_event_destroy(d.ctx, e.e))
}

// Record records e on s.
func (d *Device) Record(e *Event, s *Stream) error {
	return check("cuEventRecord", C.vox_event_record(d.ctx, e.e, s.s))
}

// Elapsed waits for b and returns the milliseconds between a and b.
func (d *Device) Elapsed(a, b *Event) (float32, error) {
	var ms C.float
	err := check("cuEventElapsedTime", C.vox_event_elapsed(d.ctx, &ms, a.e, b.e))
	return float32(ms), err
}

// Module is loaded device code.
type Module struct{ m C.CUmodule }

// LoadModule loads a PTX (NUL-terminated) or cubin image; the driver
// compiles PTX for the device the first time.
func (d *Device) LoadModule(image []byte) (*Module, error) {
	img := C.CBytes(append(append([]byte(nil), image...), 0))
	defer C.free(img)
	m := &Module{}
	return m, check("cuModuleLoadData", C.vox_module_load(d.ctx, &m.m, img))
}

// UnloadModule unloads m.
func (d *Device) UnloadModule(m *Module) error {
	return check("cuModuleUnload", C.vox_module_unload(d.ctx, m.m))
}

// Function is a kernel.
type Function struct {
	f    C.CUfunction
	name string
}

// Function looks a kernel up by name.
func (d *Device) Function(m *Module, name string) (*Function, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	f := &Function{name: name}
	return f, check("cuModuleGetFunction "+name, C.vox_function(d.ctx, &f.f, m.m, cs))
}

// Args packs kernel parameters by value, each at its natural alignment, as
// cuLaunchKernel reads them.
type Args struct {
	buf  []byte
	offs []C.int
}

// add appends n bytes of v aligned to align.
func (a *Args) add(v unsafe.Pointer, n, align int) *Args {
	off := (len(a.buf) + align - 1) / align * align
	a.buf = append(a.buf, make([]byte, off+n-len(a.buf))...)
	copy(a.buf[off:], unsafe.Slice((*byte)(v), n))
	a.offs = append(a.offs, C.int(off))
	return a
}

// Ptr adds a device pointer.
func (a *Args) Ptr(p Ptr) *Args { return a.add(unsafe.Pointer(&p), 8, 8) }

// Int adds an int32.
func (a *Args) Int(v int) *Args { x := int32(v); return a.add(unsafe.Pointer(&x), 4, 4) }

// Int64 adds an int64.
func (a *Args) Int64(v int64) *Args { return a.add(unsafe.Pointer(&v), 8, 8) }

// Float adds a float32.
func (a *Args) Float(v float32) *Args { return a.add(unsafe.Pointer(&v), 4, 4) }

// Double adds a float64.
func (a *Args) Double(v float64) *Args { return a.add(unsafe.Pointer(&v), 8, 8) }

// Struct adds a C struct by value; v points to it, and it must hold no Go pointers.
func (a *Args) Struct(v unsafe.Pointer, size, align int) *Args { return a.add(v, size, align) }

// Launch runs f on a grid of blocks of block threads (one-dimensional
// blocks) on s.
func (d *Device) Launch(f *Function, grid [3]int, block int, s *Stream, a *Args) error {
	if len(a.buf) == 0 {
		a.buf = []byte{0}
	}
	cbuf := C.CBytes(a.buf)
	defer C.free(cbuf)
	offs := a.offs
	if len(offs) == 0 {
		offs = []C.int{0}
	}
	return check("cuLaunchKernel "+f.name, C.vox_launch(d.ctx, f.f, C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block), s.s, (*C.char)(cbuf), &offs[0], C.int(len(a.offs))))
}
