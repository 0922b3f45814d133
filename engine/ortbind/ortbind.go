// Package ortbind binds ONNX Runtime inputs and outputs to memory that
// voxserve owns: host memory outside Go's heap, or CUDA device memory that
// our kernels write and read. It is the piece of ONNX Runtime's C API that
// github.com/yalue/onnxruntime_go leaves out: that package creates every
// tensor over host memory with one CPU OrtMemoryInfo, so a session could
// never read a device buffer without a round trip through the host.
//
// Sessions and their I/O bindings still come from onnxruntime_go; this
// package creates OrtMemoryInfo and OrtValue objects over given addresses
// and binds them to an onnxruntime_go IoBinding. The binding's OrtIoBinding
// pointer is read from the IoBinding struct, whose only field it is
// (checked by a test against the pinned module version), since the package
// does not export it.
//
// include/ holds ONNX Runtime's C API headers as onnxruntime_go v1.27.0
// ships them (MIT License, Microsoft): API version 24, which every later
// library serves, the 1.30 one we install included.
package ortbind

/*
#cgo CFLAGS: -I${SRCDIR}/include
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "onnxruntime_c_api.h"

static const OrtApi *vox_ort;

// vox_ort_load finds the API of the library onnxruntime_go has already
// loaded from path (RTLD_NOLOAD: never a second copy).
static int vox_ort_load(const char *path) {
	void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
	if (h == NULL) return 1;
	const OrtApiBase *(*base)(void) = (const OrtApiBase *(*)(void))dlsym(h, "OrtGetApiBase");
	if (base == NULL) return 2;
	vox_ort = base()->GetApi(ORT_API_VERSION);
	return vox_ort == NULL ? 3 : 0;
}

// vox_status turns a status into a malloc'ed message (NULL for success)
// and releases it.
static char *vox_status(OrtStatus *s) {
	if (s == NULL) return NULL;
	char *msg = strdup(vox_ort->GetErrorMessage(s));
	vox_ort->ReleaseStatus(s);
	return msg;
}

static char *vox_memory_info(const char *name, int device, OrtMemoryInfo **out) {
	return vox_status(vox_ort->CreateMemoryInfo(name, OrtDeviceAllocator, device, OrtMemTypeDefault, out));
}

static void vox_release_memory_info(OrtMemoryInfo *m) { vox_ort->ReleaseMemoryInfo(m); }

static char *vox_tensor(const OrtMemoryInfo *m, uintptr_t addr, size_t n, const int64_t *shape, size_t rank, int elem, OrtValue **out) {
	return vox_status(vox_ort->CreateTensorWithDataAsOrtValue(m, (void *)addr, n, shape, rank,
		(ONNXTensorElementDataType)elem, out));
}

static void vox_release_value(OrtValue *v) { vox_ort->ReleaseValue(v); }

static char *vox_bind(OrtIoBinding *b, const char *name, const OrtValue *v, int output) {
	if (output) return vox_status(vox_ort->BindOutput(b, name, v));
	return vox_status(vox_ort->BindInput(b, name, v));
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

var (
	loadMu   sync.Mutex
	loadPath string
)

// Load finds ONNX Runtime's C API in the library at path, which must
// already be loaded (engine.Init loads it through onnxruntime_go). Later
// calls with the same path do nothing.
func Load(path string) error {
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadPath != "" {
		if path != loadPath {
			return fmt.Errorf("ortbind: ONNX Runtime already bound from %s", loadPath)
		}
		return nil
	}
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	switch C.vox_ort_load(cPath) {
	case 0:
		loadPath = path
		return nil
	case 1:
		return fmt.Errorf("ortbind: %s is not loaded in this process", path)
	case 2:
		return fmt.Errorf("ortbind: %s has no OrtGetApiBase", path)
	default:
		return fmt.Errorf("ortbind: %s does not serve ONNX Runtime API version %d", path, C.ORT_API_VERSION)
	}
}

func loaded() error {
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadPath == "" {
		return errors.New("ortbind: ONNX Runtime not bound (call Load)")
	}
	return nil
}

func statusError(op string, msg *C.char) error {
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return fmt.Errorf("%s: %s", op, C.GoString(msg))
}

// MemoryInfo names where tensors live, as ONNX Runtime spells it: "Cpu",
// or "Cuda" with the device ordinal.
type MemoryInfo struct {
	Name   string
	Device int
	m      *C.OrtMemoryInfo
}

// NewMemoryInfo describes device memory of the named kind.
func NewMemoryInfo(name string, device int) (*MemoryInfo, error) {
	if err := loaded(); err != nil {
		return nil, err
	}
	cName := C.CString(name)
	defer C.free(unsafe.Pointer(cName))
	mi := &MemoryInfo{Name: name, Device: device}
	if err := statusError("CreateMemoryInfo("+name+")", C.vox_memory_info(cName, C.int(device), &mi.m)); err != nil {
		return nil, err
	}
	return mi, nil
}

// Close releases the memory info; tensors made with it must be gone.
func (mi *MemoryInfo) Close() {
	if mi.m != nil {
		C.vox_release_memory_info(mi.m)
		mi.m = nil
	}
}

// Tensor is an OrtValue over bytes at an address voxserve owns: ONNX
// Runtime neither copies nor frees them, so they must outlive the tensor.
type Tensor struct {
	v     *C.OrtValue
	Shape []int64
}

// NewTensor creates a tensor of shape and element type over n bytes at addr
// in mi's memory. addr is a device address for device memory; for host
// memory it must be outside Go's heap (Go may not hand its pointers to C to
// keep).
func (mi *MemoryInfo) NewTensor(addr uintptr, n int, shape []int64, elem ort.TensorElementDataType) (*Tensor, error) {
	if len(shape) == 0 {
		return nil, errors.New("ortbind: a tensor needs at least one dimension")
	}
	t := &Tensor{Shape: append([]int64(nil), shape...)}
	err := statusError("CreateTensorWithDataAsOrtValue", C.vox_tensor(mi.m, C.uintptr_t(addr), C.size_t(n),
		(*C.int64_t)(unsafe.Pointer(&t.Shape[0])), C.size_t(len(t.Shape)), C.int(elem), &t.v))
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Release frees the OrtValue (not the bytes under it).
func (t *Tensor) Release() {
	if t.v != nil {
		C.vox_release_value(t.v)
		t.v = nil
	}
}

// bindingPtr is the OrtIoBinding inside an onnxruntime_go IoBinding: its
// only field, a pointer (TestIoBindingLayout).
func bindingPtr(b *ort.IoBinding) *C.OrtIoBinding {
	return *(**C.OrtIoBinding)(unsafe.Pointer(b))
}

// BindInput binds t to the session input name.
func BindInput(b *ort.IoBinding, name string, t *Tensor) error { return bind(b, name, t, 0) }

// BindOutput binds t to the session output name: the run writes the output
// into t's bytes, which must be exactly the output's size.
func BindOutput(b *ort.IoBinding, name string, t *Tensor) error { return bind(b, name, t, 1) }

func bind(b *ort.IoBinding, name string, t *Tensor, output C.int) error {
	if b == nil || bindingPtr(b) == nil {
		return errors.New("ortbind: binding destroyed")
	}
	if t == nil || t.v == nil {
		return fmt.Errorf("ortbind: %q: tensor released", name)
	}
	cName := C.CString(name)
	defer C.free(unsafe.Pointer(cName))
	op := "BindInput(" + name + ")"
	if output == 1 {
		op = "BindOutput(" + name + ")"
	}
	return statusError(op, C.vox_bind(bindingPtr(b), cName, t.v, output))
}
