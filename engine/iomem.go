package engine

import (
	"fmt"
	"syscall"
	"unsafe"

	"github.com/voxserve/voxserve/tensor"
)

// ioMemory is where a model instance's bound inputs and outputs live:
// host memory under the CPU provider, the GPU's memory under CUDA
// (iomem_cuda.go). The scheduler assembles batches through it the same
// way over either, so the CPU build tests the path the GPU runs.
type ioMemory interface {
	// ortName and device are how ONNX Runtime names this memory.
	ortName() string
	device() int
	alloc(n int) (ioBuffer, error)
	free(ioBuffer) error
	// kind is "host" or "device" (Model.IOMemory).
	kind() string
	// put copies src into b at off; get copies len(dst) bytes at off in b
	// into dst. Copies may run asynchronously until wait returns.
	put(b ioBuffer, off int, src []byte) error
	// putDevice copies bytes already in this memory (a GPU's preprocessing
	// output) into b at off: device to device, no host round trip.
	putDevice(b ioBuffer, off int, src *tensor.DeviceBytes) error
	get(dst []byte, b ioBuffer, off int) error
	// getDevice copies dst.Len bytes at off in b to memory of the same
	// kind the caller owns (an output the GPU's postprocessing reads).
	getDevice(dst *tensor.DeviceBytes, b ioBuffer, off int) error
	wait() error
	close() error
	// String says what the memory is, for logs and GetModel.
	String() string
}

// ioBuffer is n bytes at addr; host is the same bytes when they are
// host memory Go can address.
type ioBuffer struct {
	addr uintptr
	n    int
	host []byte
}

// hostMemory maps anonymous memory: outside Go's heap, since ONNX Runtime
// keeps the address between calls, and untouched pages cost nothing, so a
// buffer sized for the largest batch only takes what batches use.
type hostMemory struct{}

func (hostMemory) ortName() string { return "Cpu" }
func (hostMemory) kind() string    { return "host" }
func (hostMemory) device() int     { return 0 }
func (hostMemory) String() string  { return "host memory" }

func (hostMemory) alloc(n int) (ioBuffer, error) {
	b, err := syscall.Mmap(-1, 0, max(n, 1), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return ioBuffer{}, fmt.Errorf("mapping %d bytes: %w", n, err)
	}
	return ioBuffer{addr: uintptr(unsafe.Pointer(&b[0])), n: n, host: b[:n]}, nil
}

func (hostMemory) free(b ioBuffer) error {
	if b.host == nil {
		return nil
	}
	return syscall.Munmap(b.host[:cap(b.host)])
}

func (hostMemory) put(b ioBuffer, off int, src []byte) error {
	if off+len(src) > b.n {
		return fmt.Errorf("copy of %d bytes at %d overruns a %d-byte buffer", len(src), off, b.n)
	}
	copy(b.host[off:], src)
	return nil
}

func (m hostMemory) putDevice(b ioBuffer, off int, src *tensor.DeviceBytes) error {
	if src.Host == nil || len(src.Host) != src.Len {
		return fmt.Errorf("input of %d bytes is in device memory, and the model's inputs are bound in host memory", src.Len)
	}
	return m.put(b, off, src.Host)
}

func (hostMemory) get(dst []byte, b ioBuffer, off int) error {
	if off+len(dst) > b.n {
		return fmt.Errorf("copy of %d bytes at %d overruns a %d-byte buffer", len(dst), off, b.n)
	}
	copy(dst, b.host[off:])
	return nil
}

func (m hostMemory) getDevice(dst *tensor.DeviceBytes, b ioBuffer, off int) error {
	if dst.Host == nil || len(dst.Host) != dst.Len {
		return fmt.Errorf("destination of %d bytes is in device memory, and the model's outputs are bound in host memory", dst.Len)
	}
	return m.get(dst.Host, b, off)
}

func (hostMemory) wait() error  { return nil }
func (hostMemory) close() error { return nil }
