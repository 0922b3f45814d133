package bundle

import (
	"fmt"
	"slices"
	"sort"

	"github.com/voxserve/voxserve/tensor"
)

// MaxWarmupBytes caps a warm-up request's inputs, which are made in memory
// at load: a bundle must not be able to take the server down with one.
const MaxWarmupBytes = 1 << 30

// Warmup is one of Triton's model_warmup entries: a synthetic request run
// when a version loads, before it is ready. The first runs of a session
// pay one-off costs (the CUDA provider's cuDNN algorithm search, arena
// growth, thread pools) that would otherwise fall on the first real
// requests, STAT ones included.
type Warmup struct {
	Name string `yaml:"name"`
	// BatchSize is the batch axis of the request (max_batch_size > 0;
	// default 1), at most max_batch_size.
	BatchSize int64 `yaml:"batch_size"`
	// Count is how many times it runs (default 1).
	Count int `yaml:"count"`
	// Inputs by name; an input not listed gets zeros of its declared dims.
	Inputs map[string]WarmupInput `yaml:"inputs"`
}

// WarmupInput is one input of a warm-up request.
type WarmupInput struct {
	// DataType, if given, must be the declared one (Triton's configs name it).
	DataType string `yaml:"data_type"`
	// Dims replace the declared dims, and are required where those are
	// dynamic; without the batch axis, like the declaration.
	Dims []int64 `yaml:"dims"`
	// ZeroData (the default) or RandomData (seeded, so runs repeat).
	ZeroData   bool `yaml:"zero_data"`
	RandomData bool `yaml:"random_data"`
}

// WarmupDims are input in's dims for warm-up w, without the batch axis.
func (w *Warmup) WarmupDims(in Input) []int64 {
	if d := w.Inputs[in.Name].Dims; d != nil {
		return d
	}
	return in.Dims
}

func (s *Spec) validateWarmup(bad func(field, format string, args ...any)) {
	declared := map[string]Input{}
	for _, in := range s.Inputs {
		declared[in.Name] = in
	}
	for i := range s.ModelWarmup {
		w := &s.ModelWarmup[i]
		f := fmt.Sprintf("model_warmup[%d]", i)
		if s.MaxBatchSize > 0 && (w.BatchSize < 1 || w.BatchSize > s.MaxBatchSize) {
			bad(f+".batch_size", "%d must be between 1 and max_batch_size %d", w.BatchSize, s.MaxBatchSize)
		}
		if s.MaxBatchSize == 0 && w.BatchSize > 1 {
			bad(f+".batch_size", "%d: the model has no batch axis (max_batch_size 0)", w.BatchSize)
		}
		if w.Count < 1 || w.Count > 100 {
			bad(f+".count", "%d must be between 1 and 100", w.Count)
		}
		names := make([]string, 0, len(w.Inputs))
		for name := range w.Inputs {
			names = append(names, name)
		}
		sort.Strings(names) // errors in a stable order
		for _, name := range names {
			wi := w.Inputs[name]
			in, ok := declared[name]
			field := f + ".inputs." + name
			if !ok {
				bad(field, "no input %q is declared", name)
				continue
			}
			if wi.DataType != "" && wi.DataType != in.DataType {
				bad(field+".data_type", "%q differs from the declared %q", wi.DataType, in.DataType)
			}
			if wi.ZeroData && wi.RandomData {
				bad(field, "set one of zero_data and random_data")
			}
			if wi.Dims != nil && len(wi.Dims) != len(in.Dims) {
				bad(field+".dims", "%v has %d dims; the input declares %d", wi.Dims, len(wi.Dims), len(in.Dims))
				continue
			}
			for j, d := range wi.Dims {
				switch {
				case d < 1:
					bad(fmt.Sprintf("%s.dims[%d]", field, j), "%d must be >= 1", d)
				case in.Dims[j] >= 0 && d != in.Dims[j]:
					bad(fmt.Sprintf("%s.dims[%d]", field, j), "%d must be the declared %d", d, in.Dims[j])
				}
			}
		}
		var total int64 // bytes: the warm-up's inputs are made in memory at load
		for _, in := range s.Inputs {
			dims := w.WarmupDims(in)
			if slices.ContainsFunc(dims, func(d int64) bool { return d < 0 }) {
				bad(f+".inputs."+in.Name+".dims", "required: the input has a dynamic dim")
				continue
			}
			dt, _ := tensor.ParseDType(in.DataType) // checked with the inputs
			n, err := tensor.NumElements(append([]int64{max(w.BatchSize, 1)}, dims...))
			if err != nil || n > MaxWarmupBytes {
				total = MaxWarmupBytes + 1
				continue
			}
			total += n * int64(max(dt.Size(), 1))
		}
		if total > MaxWarmupBytes {
			bad(f, "its inputs take more than the %d bytes a warm-up may", int64(MaxWarmupBytes))
		}
	}
}
