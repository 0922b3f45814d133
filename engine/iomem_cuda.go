//go:build cuda

package engine

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/voxserve/voxserve/kernels/cuda"
	"github.com/voxserve/voxserve/tensor"
)

// deviceMemory is one model instance's bound I/O on a GPU: buffers in
// device memory of the primary context ONNX Runtime's CUDA provider also
// uses, and copies on the instance's own stream, so that one instance's
// upload overlaps another's run.
type deviceMemory struct {
	dev     *cuda.Device
	ordinal int
	stream  *cuda.Stream
}

func newDeviceMemory(ordinal int) (ioMemory, error) {
	dev, err := cuda.Open(ordinal)
	if err != nil {
		return nil, err
	}
	s, err := dev.NewStream()
	if err != nil {
		return nil, errors.Join(err, dev.Close())
	}
	return &deviceMemory{dev: dev, ordinal: ordinal, stream: s}, nil
}

func (m *deviceMemory) ortName() string { return "Cuda" }
func (m *deviceMemory) kind() string    { return "device" }
func (m *deviceMemory) device() int     { return m.ordinal }
func (m *deviceMemory) String() string {
	return fmt.Sprintf("device memory (cuda:%d, %s)", m.ordinal, m.dev.Name)
}

func (m *deviceMemory) alloc(n int) (ioBuffer, error) {
	p, err := m.dev.Alloc(max(n, 1))
	return ioBuffer{addr: uintptr(p), n: n}, err
}

func (m *deviceMemory) free(b ioBuffer) error {
	if b.addr == 0 {
		return nil
	}
	return m.dev.Free(cuda.Ptr(b.addr))
}

func (m *deviceMemory) put(b ioBuffer, off int, src []byte) error {
	if off+len(src) > b.n {
		return fmt.Errorf("copy of %d bytes at %d overruns a %d-byte buffer", len(src), off, b.n)
	}
	if len(src) == 0 {
		return nil
	}
	// src stays referenced by the caller until wait returns.
	return m.dev.CopyToDevice(cuda.Ptr(b.addr)+cuda.Ptr(off), unsafe.Pointer(unsafe.SliceData(src)), len(src), m.stream)
}

func (m *deviceMemory) putDevice(b ioBuffer, off int, src *tensor.DeviceBytes) error {
	if off+src.Len > b.n {
		return fmt.Errorf("copy of %d bytes at %d overruns a %d-byte buffer", src.Len, off, b.n)
	}
	if src.Host != nil { // a host-memory stand-in: upload it
		return m.put(b, off, src.Host)
	}
	return m.dev.Copy(cuda.Ptr(b.addr)+cuda.Ptr(off), cuda.Ptr(src.Addr), src.Len, m.stream)
}

func (m *deviceMemory) get(dst []byte, b ioBuffer, off int) error {
	if off+len(dst) > b.n {
		return fmt.Errorf("copy of %d bytes at %d overruns a %d-byte buffer", len(dst), off, b.n)
	}
	if len(dst) == 0 {
		return nil
	}
	return m.dev.CopyToHost(unsafe.Pointer(unsafe.SliceData(dst)), cuda.Ptr(b.addr)+cuda.Ptr(off), len(dst), m.stream)
}

func (m *deviceMemory) getDevice(dst *tensor.DeviceBytes, b ioBuffer, off int) error {
	if off+dst.Len > b.n {
		return fmt.Errorf("copy of %d bytes at %d overruns a %d-byte buffer", dst.Len, off, b.n)
	}
	if dst.Host != nil { // a host-memory stand-in: download into it
		return m.get(dst.Host, b, off)
	}
	return m.dev.Copy(cuda.Ptr(dst.Addr), cuda.Ptr(b.addr)+cuda.Ptr(off), dst.Len, m.stream)
}

func (m *deviceMemory) wait() error { return m.dev.Sync(m.stream) }

func (m *deviceMemory) close() error {
	return errors.Join(m.dev.DestroyStream(m.stream), m.dev.Close())
}
