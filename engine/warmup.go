package engine

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/tensor"
)

// warmup runs the bundle's model_warmup requests (Triton's) on a version
// that is loaded but not yet published: the one-off costs of a session's
// first runs (the CUDA provider's cuDNN algorithm search for each shape,
// arena growth, thread pools) are paid here, not by the first requests.
// Each request runs on every instance's bound I/O, so that each is
// warm; it goes around the scheduler, so the statistics count only real
// requests. A failure fails the load, as in Triton: a version that cannot
// run its warm-up is not ready.
func (m *Model) warmup(log *slog.Logger) error {
	for i := range m.Spec.ModelWarmup {
		w := &m.Spec.ModelWarmup[i]
		inputs, err := warmupInputs(m.Spec, w, uint64(i))
		if err != nil {
			return fmt.Errorf("model_warmup[%d] (%s): %w", i, w.Name, err)
		}
		ordered, err := orderInputs(m.Spec, inputs)
		if err != nil {
			return fmt.Errorf("model_warmup[%d] (%s): %s", i, w.Name, status.Convert(err).Message())
		}
		for k := 0; k < w.Count; k++ {
			start := time.Now()
			if err := m.runAlone(ordered, max(w.BatchSize, 1)); err != nil {
				return fmt.Errorf("model_warmup[%d] (%s), run %d: %w", i, w.Name, k+1, err)
			}
			log.Info("warm-up run", "warmup", w.Name, "batch_size", w.BatchSize, "run", k+1, "ms", float64(time.Since(start).Microseconds())/1000)
		}
	}
	return nil
}

// runAlone runs one batch of n items outside the scheduler: on each
// instance's bound I/O in turn, or through the session once. Only for a
// version no one else can reach yet. Errors are ONNX Runtime's, which
// loadError classifies (out of memory: RESOURCE_EXHAUSTED).
func (m *Model) runAlone(inputs []*tensor.Tensor, n int64) error {
	if m.io == nil {
		_, err := m.sess.run(inputs)
		return err
	}
	held := make([]*boundIO, 0, cap(m.io))
	defer func() {
		for _, b := range held {
			m.io <- b
		}
	}()
	for len(held) < cap(m.io) {
		b := <-m.io
		held = append(held, b)
		if _, _, err := b.run(m.sess, []*request{{inputs: inputs, n: n}}, n); err != nil {
			return err
		}
	}
	return nil
}

// warmupInputs builds warm-up w's request: every declared input, zeros or
// seeded random values of its warm-up dims, with the batch axis.
func warmupInputs(spec *bundle.Spec, w *bundle.Warmup, seed uint64) ([]*tensor.Tensor, error) {
	rng := rand.New(rand.NewPCG(seed, 0x7761726d))
	var out []*tensor.Tensor
	for _, in := range spec.Inputs {
		dt, err := tensor.ParseDType(in.DataType)
		if err != nil {
			return nil, err
		}
		shape := w.WarmupDims(in)
		if spec.MaxBatchSize > 0 {
			shape = append([]int64{w.BatchSize}, shape...)
		}
		n, err := tensor.NumElements(shape)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", in.Name, err)
		}
		data := make([]byte, int(n)*dt.Size())
		if w.Inputs[in.Name].RandomData {
			fillRandom(data, dt, rng)
		}
		out = append(out, &tensor.Tensor{Name: in.Name, DType: dt, Shape: shape, Data: data})
	}
	return out, nil
}

// fillRandom writes random values of type dt: standard normal for floats,
// 0 to 9 for integers, 0 or 1 for booleans.
func fillRandom(data []byte, dt tensor.DType, rng *rand.Rand) {
	size := dt.Size()
	for at := 0; at < len(data); at += size {
		b := data[at : at+size]
		switch dt {
		case tensor.Float32:
			binary.LittleEndian.PutUint32(b, math.Float32bits(float32(rng.NormFloat64())))
		case tensor.Float64:
			binary.LittleEndian.PutUint64(b, math.Float64bits(rng.NormFloat64()))
		case tensor.Float16:
			// A half in [1, 2): sign 0, exponent 15, random mantissa.
			binary.LittleEndian.PutUint16(b, 15<<10|uint16(rng.IntN(1<<10)))
		case tensor.Bool:
			b[0] = byte(rng.IntN(2))
		default: // integers, little-endian: the low byte carries 0 to 9
			b[0] = byte(rng.IntN(10))
		}
	}
}
