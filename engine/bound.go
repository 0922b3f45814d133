package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/engine/ortbind"
	"github.com/voxserve/voxserve/tensor"
)

// boundIO is one model instance's I/O binding: a buffer per input and
// output, preallocated for max_batch_size items in the memory of the
// session's provider. A batch is assembled straight into the input
// buffers (each request copied once), the model reads them and writes its
// outputs where they are, and nothing is allocated per run. On the GPU
// this is ONNX Runtime's I/O binding with CUDA memory info: the batch is
// uploaded once, into the memory the model reads.
type boundIO struct {
	mem       ioMemory
	info      *ortbind.MemoryInfo
	binding   *ort.IoBinding
	batched   bool // the model has a batch axis (max_batch_size > 0)
	ins, outs []boundTensor
}

type boundTensor struct {
	name  string
	dtype tensor.DType
	dims  []int64 // per item: the declared dims
	item  int     // bytes per item
	buf   ioBuffer
}

// ioBindingPlan decides whether a version's instances bind their I/O and
// where: it returns a constructor for one instance's memory, or nil and
// why not. The choice follows execution.io_binding (bundle.Execution).
func ioBindingPlan(spec *bundle.Spec, provider string) (newMem func() (ioMemory, error), why string) {
	mode := spec.Execution.IOBinding
	onGPU := provider == "cuda" || provider == "tensorrt"
	switch {
	case mode == "off":
		return nil, "io_binding: off"
	case mode == "auto" && !onGPU:
		return nil, "the session runs on the CPU"
	case bundle.DynamicDims(spec) != "":
		return nil, bundle.DynamicDims(spec) + " has a dynamic dim"
	case errBindUnavailable != nil:
		return nil, errBindUnavailable.Error()
	case !onGPU:
		return func() (ioMemory, error) { return hostMemory{}, nil }, ""
	}
	dev := spec.Execution.CUDA.DeviceID
	if provider == "tensorrt" {
		dev = spec.Execution.TensorRT.DeviceID
	}
	return func() (ioMemory, error) { return newDeviceMemory(dev) }, ""
}

// newInstanceIO gives each of a version's instances its bound I/O, or
// returns nil (runs then go through onnxruntime_go's own tensors) with
// the reason logged. io_binding: on makes a failure a load error.
func newInstanceIO(spec *bundle.Spec, sess *session, log *slog.Logger) (chan *boundIO, string, error) {
	newMem, why := ioBindingPlan(spec, sess.provider)
	if newMem == nil {
		if spec.Execution.IOBinding == "on" {
			return nil, "", fmt.Errorf("execution.io_binding: on, but %s", why)
		}
		return nil, "off: " + why, nil
	}
	ios := make(chan *boundIO, spec.InstanceCount)
	var where string
	for i := 0; i < spec.InstanceCount; i++ {
		mem, err := newMem()
		var b *boundIO
		if err == nil {
			b, err = newBoundIO(spec, sess, mem) // closes mem on error
		}
		if err != nil {
			closeInstanceIO(ios)
			if spec.Execution.IOBinding == "on" {
				return nil, "", fmt.Errorf("execution.io_binding: %w", err)
			}
			log.Warn("inputs and outputs not bound; runs copy through ONNX Runtime's tensors", "reason", err)
			return nil, "off: " + err.Error(), nil
		}
		where = mem.String()
		ios <- b
	}
	log.Info("inputs and outputs bound", "memory", where)
	return ios, where, nil
}

func closeInstanceIO(ios chan *boundIO) {
	if ios == nil {
		return
	}
	for {
		select {
		case b := <-ios:
			b.close()
		default:
			return
		}
	}
}

func newBoundIO(spec *bundle.Spec, sess *session, mem ioMemory) (b *boundIO, err error) {
	b = &boundIO{mem: mem, batched: spec.MaxBatchSize > 0}
	defer func() {
		if err != nil {
			b.close()
			b = nil
		}
	}()
	if b.info, err = ortbind.NewMemoryInfo(mem.ortName(), mem.device()); err != nil {
		return nil, err
	}
	if b.binding, err = sess.s.CreateIoBinding(); err != nil {
		return nil, err
	}
	items := int(max(spec.MaxBatchSize, 1))
	add := func(list *[]boundTensor, name, dtype string, dims []int64) error {
		dt, err := tensor.ParseDType(dtype)
		if err != nil {
			return err
		}
		t := boundTensor{name: name, dtype: dt, dims: dims, item: dt.Size()}
		for _, d := range dims {
			t.item *= int(d)
		}
		if t.buf, err = mem.alloc(items * t.item); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		*list = append(*list, t)
		return nil
	}
	for _, in := range spec.Inputs {
		if err := add(&b.ins, in.Name, in.DataType, in.Dims); err != nil {
			return b, err
		}
	}
	for _, out := range spec.Outputs {
		if err := add(&b.outs, out.Name, out.DataType, out.Dims); err != nil {
			return b, err
		}
	}
	return b, nil
}

func (b *boundIO) close() {
	if b.binding != nil {
		_ = b.binding.Destroy()
	}
	for _, t := range append(b.ins, b.outs...) {
		_ = b.mem.free(t.buf)
	}
	if b.info != nil {
		b.info.Close()
	}
	_ = b.mem.close()
}

// shape is a tensor's shape for a batch of n items.
func (b *boundIO) shape(t *boundTensor, n int64) []int64 {
	if !b.batched {
		return t.dims
	}
	return append([]int64{n}, t.dims...)
}

// run executes the batch live (total items): its inputs copied into the
// bound buffers, the model run over them. Each output goes to the memory
// its requests asked for (request.into), device to device, and to the
// host whole (the scheduler splits it) only when some request wants it
// there; otherwise the output tensor has no bytes. input is the time the
// assembly took.
func (b *boundIO) run(sess *session, live []*request, total int64) (outs []*tensor.Tensor, input time.Duration, err error) {
	start := time.Now()
	var tensors []*ortbind.Tensor
	defer func() {
		for _, t := range tensors {
			t.Release()
		}
		b.binding.ClearBoundInputs()
		b.binding.ClearBoundOutputs()
	}()
	bind := func(t *boundTensor, output bool) error {
		n := int(total) * t.item
		v, err := b.info.NewTensor(t.buf.addr, n, b.shape(t, total), ortTypes[t.dtype])
		if err != nil {
			return err
		}
		tensors = append(tensors, v)
		if output {
			return ortbind.BindOutput(b.binding, t.name, v)
		}
		return ortbind.BindInput(b.binding, t.name, v)
	}
	for i := range b.ins {
		t := &b.ins[i]
		off := 0
		for _, r := range live {
			in := r.inputs[i]
			var err error
			if in.Device != nil {
				err = b.mem.putDevice(t.buf, off, in.Device)
			} else {
				err = b.mem.put(t.buf, off, in.Data)
			}
			if err != nil {
				return nil, 0, fmt.Errorf("input %q: %w", t.name, err)
			}
			off += in.ByteLen()
		}
		if off != int(total)*t.item {
			return nil, 0, status.Errorf(codes.Internal, "input %q: batch of %d items has %d bytes, want %d", t.name, total, off, int(total)*t.item)
		}
		if err := bind(t, false); err != nil {
			return nil, 0, err
		}
	}
	for i := range b.outs {
		if err := bind(&b.outs[i], true); err != nil {
			return nil, 0, err
		}
	}
	if err := b.mem.wait(); err != nil {
		return nil, 0, err
	}
	input = time.Since(start)
	if err := sess.s.RunWithBinding(b.binding); err != nil {
		return nil, input, err
	}
	outs = make([]*tensor.Tensor, len(b.outs))
	for i := range b.outs {
		t := &b.outs[i]
		outs[i] = &tensor.Tensor{Name: t.name, DType: t.dtype, Shape: b.shape(t, total)}
		host, off := false, 0
		for _, r := range live {
			n := int(r.n) * t.item
			if d := r.intoOf(i); d != nil {
				if err := b.mem.getDevice(d, t.buf, off); err != nil {
					return nil, input, fmt.Errorf("output %q: %w", t.name, err)
				}
			} else {
				host = true
			}
			off += n
		}
		if host {
			outs[i].Data = make([]byte, int(total)*t.item)
			if err := b.mem.get(outs[i].Data, t.buf, 0); err != nil {
				return nil, input, fmt.Errorf("output %q: %w", t.name, err)
			}
		}
	}
	return outs, input, b.mem.wait()
}

// errBindUnavailable is why ONNX Runtime's C API could not be bound at
// Init (nil when it was): I/O binding is then unavailable and runs copy.
var errBindUnavailable = errors.New("ONNX Runtime not initialized")
