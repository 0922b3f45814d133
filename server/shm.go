package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kpb "github.com/voxserve/voxserve/proto/inference"
)

// shmDir is where Linux keeps POSIX shared memory objects: shm_open("/k")
// opens shmDir/k.
const shmDir = "/dev/shm"

// sharedMemory is Triton's system shared memory extension: regions a
// client on the same host registered, which inputs are read from and
// outputs written to instead of travelling in the message. A 1 MiB
// tensor then costs a memcpy, not a trip through HTTP/2 framing.
//
// A region is unmapped only when no request still uses it, so an
// unregister racing an inference never pulls memory from under it.
type sharedMemory struct {
	mu      sync.Mutex
	regions map[string]*shmRegion
	dir     string // shmDir; tests may point it elsewhere
	bufs    bufPool
}

type shmRegion struct {
	name, key    string
	offset, size uint64
	mapping      []byte // the whole object mapped, from 0 to offset+size
	refs         int    // requests using it (under sharedMemory.mu)
	unregistered bool
}

func newSharedMemory() *sharedMemory {
	return &sharedMemory{regions: map[string]*shmRegion{}, dir: shmDir}
}

// data is the region's registered bytes.
func (r *shmRegion) data() []byte { return r.mapping[r.offset : r.offset+r.size] }

// checkKey accepts a POSIX shared memory name: one leading slash (optional,
// as shm_open treats it), then a file name, nothing that leaves the folder.
func checkKey(key string) (string, error) {
	k := strings.TrimPrefix(key, "/")
	if k == "" || strings.ContainsAny(k, "/\x00") || k == "." || k == ".." {
		return "", fmt.Errorf("key %q is not a shared memory object name (want \"/name\")", key)
	}
	return k, nil
}

func (s *sharedMemory) register(req *kpb.SystemSharedMemoryRegisterRequest) error {
	name := req.GetName()
	if name == "" {
		return status.Error(codes.InvalidArgument, "name: required")
	}
	k, err := checkKey(req.GetKey())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "key: %v", err)
	}
	if req.GetByteSize() == 0 {
		return status.Error(codes.InvalidArgument, "byte_size: must be > 0")
	}
	end := req.GetOffset() + req.GetByteSize()
	if end < req.GetOffset() || end > 1<<40 {
		return status.Errorf(codes.InvalidArgument, "offset %d + byte_size %d is out of range", req.GetOffset(), req.GetByteSize())
	}
	s.mu.Lock()
	_, dup := s.regions[name]
	s.mu.Unlock()
	if dup {
		return status.Errorf(codes.AlreadyExists, "shared memory region %q is already registered", name)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, k), os.O_RDWR, 0)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "key %q: %v", req.GetKey(), err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "key %q: %v", req.GetKey(), err)
	}
	if uint64(st.Size()) < end {
		return status.Errorf(codes.InvalidArgument, "key %q is %d bytes; offset %d + byte_size %d does not fit", req.GetKey(), st.Size(), req.GetOffset(), req.GetByteSize())
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(end), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return status.Errorf(codes.Internal, "mapping %q: %v", req.GetKey(), err)
	}
	r := &shmRegion{name: name, key: req.GetKey(), offset: req.GetOffset(), size: req.GetByteSize(), mapping: m}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.regions[name]; dup {
		_ = syscall.Munmap(m)
		return status.Errorf(codes.AlreadyExists, "shared memory region %q is already registered", name)
	}
	s.regions[name] = r
	return nil
}

// unregister drops name (every region for ""); a region in use is
// unmapped by its last user.
func (s *sharedMemory) unregister(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name != "" {
		if _, ok := s.regions[name]; !ok {
			return status.Errorf(codes.NotFound, "no shared memory region %q", name)
		}
	}
	for n, r := range s.regions {
		if name == "" || n == name {
			delete(s.regions, n)
			r.unregistered = true
			if r.refs == 0 {
				_ = syscall.Munmap(r.mapping)
			}
		}
	}
	return nil
}

func (s *sharedMemory) statusOf(name string) (*kpb.SystemSharedMemoryStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &kpb.SystemSharedMemoryStatusResponse{Regions: map[string]*kpb.SystemSharedMemoryStatusResponse_RegionStatus{}}
	for n, r := range s.regions {
		if name == "" || n == name {
			resp.Regions[n] = &kpb.SystemSharedMemoryStatusResponse_RegionStatus{Name: n, Key: r.key, Offset: r.offset, ByteSize: r.size}
		}
	}
	if name != "" && len(resp.Regions) == 0 {
		return nil, status.Errorf(codes.NotFound, "no shared memory region %q", name)
	}
	return resp, nil
}

// shmUse holds the regions one request reads or writes until done.
type shmUse struct {
	s    *sharedMemory
	held []*shmRegion
	// copies are the request's inputs copied out of regions, from s.bufs.
	copies [][]byte
}

// input copies an input out of its region (shmCopy says why).
func (u *shmUse) input(data []byte) ([]byte, error) {
	b := u.s.bufs.get(len(data))
	if err := shmCopy(b, data); err != nil {
		return nil, err
	}
	u.copies = append(u.copies, b)
	return b, nil
}

// recycle gives the input copies back for later requests. Only after a
// request succeeded: then no batch can still be reading them.
func (u *shmUse) recycle() {
	for _, b := range u.copies {
		u.s.bufs.put(b)
	}
	u.copies = nil
}

// bufPool recycles the copies of shared memory inputs: a fresh MiB per
// request costs more in page faults and garbage collection than the copy
// itself (0.4-0.5 ms against 0.1 on 2 cores).
type bufPool struct{ p sync.Pool }

func (b *bufPool) get(n int) []byte {
	if v, ok := b.p.Get().(*[]byte); ok && cap(*v) >= n && cap(*v) <= 2*n {
		return (*v)[:n]
	}
	return make([]byte, n)
}

func (b *bufPool) put(s []byte) { b.p.Put(&s) }

// slice returns byte_size bytes at offset in the region a tensor's
// parameters name, or ok false when they name none.
func (u *shmUse) slice(what string, params map[string]*kpb.InferParameter) (b []byte, ok bool, err error) {
	p, ok := params["shared_memory_region"]
	if !ok {
		return nil, false, nil
	}
	if u.s == nil {
		return nil, true, status.Errorf(codes.FailedPrecondition, "%s: %s", what, status.Convert(errSharedMemoryOff).Message())
	}
	name := p.GetStringParam()
	size, err := intParam("shared_memory_byte_size", params["shared_memory_byte_size"])
	if err != nil || size == 0 {
		return nil, true, status.Errorf(codes.InvalidArgument, "%s: shared_memory_byte_size: want a positive integer", what)
	}
	var off int64
	if p, has := params["shared_memory_offset"]; has {
		if off, err = intParam("shared_memory_offset", p); err != nil {
			return nil, true, status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
		}
	}
	u.s.mu.Lock()
	r := u.s.regions[name]
	if r != nil {
		r.refs++
		u.held = append(u.held, r)
	}
	u.s.mu.Unlock()
	if r == nil {
		return nil, true, status.Errorf(codes.NotFound, "%s: no shared memory region %q", what, name)
	}
	if uint64(off) > r.size || uint64(size) > r.size-uint64(off) {
		return nil, true, status.Errorf(codes.InvalidArgument, "%s: offset %d + byte_size %d overruns region %q of %d bytes", what, off, size, name, r.size)
	}
	return r.data()[off : off+size], true, nil
}

// done releases the regions; the last user of an unregistered one unmaps it.
func (u *shmUse) done() {
	if u.s == nil {
		return
	}
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	for _, r := range u.held {
		r.refs--
		if r.refs == 0 && r.unregistered {
			_ = syscall.Munmap(r.mapping)
		}
	}
	u.held = nil
}

// shmCopy copies between a region and Go memory, turning a fault into an
// error: a client that truncates its object after registering it would
// otherwise crash the server with SIGBUS. For the same reason inputs are
// copied out of the region before ONNX Runtime (C code, where no fault can
// be caught) reads them.
func shmCopy(dst, src []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.InvalidArgument, "shared memory region no longer readable or writable (was its object truncated?): %v", r)
		}
	}()
	copy(dst, src)
	return nil
}

// errSharedMemoryOff answers the extension's calls when it is off.
var errSharedMemoryOff = status.Error(codes.FailedPrecondition, "shared memory is off (start voxserve with --shared-memory)")

// SystemSharedMemoryRegister maps a client's region.
func (k *kserve) SystemSharedMemoryRegister(_ context.Context, req *kpb.SystemSharedMemoryRegisterRequest) (*kpb.SystemSharedMemoryRegisterResponse, error) {
	if k.shm == nil {
		return nil, errSharedMemoryOff
	}
	if err := k.shm.register(req); err != nil {
		return nil, err
	}
	return &kpb.SystemSharedMemoryRegisterResponse{}, nil
}

// SystemSharedMemoryUnregister drops a region (every region for no name).
func (k *kserve) SystemSharedMemoryUnregister(_ context.Context, req *kpb.SystemSharedMemoryUnregisterRequest) (*kpb.SystemSharedMemoryUnregisterResponse, error) {
	if k.shm == nil {
		return nil, errSharedMemoryOff
	}
	if err := k.shm.unregister(req.GetName()); err != nil {
		return nil, err
	}
	return &kpb.SystemSharedMemoryUnregisterResponse{}, nil
}

// SystemSharedMemoryStatus lists the registered regions.
func (k *kserve) SystemSharedMemoryStatus(_ context.Context, req *kpb.SystemSharedMemoryStatusRequest) (*kpb.SystemSharedMemoryStatusResponse, error) {
	if k.shm == nil {
		return nil, errSharedMemoryOff
	}
	return k.shm.statusOf(req.GetName())
}
