package engine

import (
	"fmt"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/tensor"
)

// fullDims is the declared shape including the batch axis (as -1) when the
// model batches.
func fullDims(spec *bundle.Spec, dims []int64) []int64 {
	if spec.MaxBatchSize > 0 {
		return append([]int64{-1}, dims...)
	}
	return append([]int64(nil), dims...)
}

// checkGraph compares the ONNX graph's inputs and outputs with the bundle's
// declaration. Every mismatch names the bundle field.
func checkGraph(file string, spec *bundle.Spec, ins, outs []ort.InputOutputInfo) error {
	var problems []string
	compare := func(kind string, declared []declTensor, graph []ort.InputOutputInfo) {
		byName := map[string]ort.InputOutputInfo{}
		for _, g := range graph {
			byName[g.Name] = g
		}
		seen := map[string]bool{}
		for i, d := range declared {
			field := fmt.Sprintf("%s[%d]", kind, i)
			g, ok := byName[d.name]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s.name: %q is not a graph %s (graph has %s)", field, d.name, strings.TrimSuffix(kind, "s"), names(graph)))
				continue
			}
			seen[d.name] = true
			if g.OrtValueType != ort.ONNXTypeTensor {
				problems = append(problems, fmt.Sprintf("%s: graph %s %q is a %v, not a tensor", field, strings.TrimSuffix(kind, "s"), d.name, g.OrtValueType))
				continue
			}
			gt, ok := dtypeOf(g.DataType)
			if !ok || gt != d.dtype {
				problems = append(problems, fmt.Sprintf("%s.data_type: declared %s, graph has %v", field, d.dtype, g.DataType))
			}
			want := fullDims(spec, d.dims)
			got := []int64(g.Dimensions)
			if len(want) != len(got) {
				problems = append(problems, fmt.Sprintf("%s.dims: declared %s (with batch axis: %s), graph has %s", field, tensor.ShapeString(d.dims), tensor.ShapeString(want), tensor.ShapeString(got)))
				continue
			}
			for j := range want {
				switch {
				case want[j] == -1 && got[j] > 0 && j == 0 && spec.MaxBatchSize > 0:
					problems = append(problems, fmt.Sprintf("%s: max_batch_size is %d but the graph's first axis is fixed at %d; export it with a dynamic batch axis", field, spec.MaxBatchSize, got[j]))
				case want[j] == -1 && got[j] > 0:
					problems = append(problems, fmt.Sprintf("%s.dims: axis %d declared dynamic (-1) but the graph fixes it at %d", field, j, got[j]))
				case want[j] > 0 && got[j] > 0 && want[j] != got[j]:
					problems = append(problems, fmt.Sprintf("%s.dims: axis %d declared %d, graph has %d", field, j, want[j], got[j]))
				}
			}
		}
		for _, g := range graph {
			if !seen[g.Name] && kind == "inputs" {
				problems = append(problems, fmt.Sprintf("%s: graph input %q is not declared", kind, g.Name))
			}
		}
	}
	compare("inputs", declared(spec.Inputs), ins)
	var outDecl []declTensor
	for _, o := range spec.Outputs {
		dt, _ := tensor.ParseDType(o.DataType)
		outDecl = append(outDecl, declTensor{o.Name, dt, o.Dims})
	}
	compare("outputs", outDecl, outs)
	if len(problems) > 0 {
		return fmt.Errorf("%s does not match %s:\n  %s", file, bundle.FileName, strings.Join(problems, "\n  "))
	}
	return nil
}

type declTensor struct {
	name  string
	dtype tensor.DType
	dims  []int64
}

func declared(ins []bundle.Input) []declTensor {
	out := make([]declTensor, len(ins))
	for i, in := range ins {
		dt, _ := tensor.ParseDType(in.DataType)
		out[i] = declTensor{in.Name, dt, in.Dims}
	}
	return out
}

func names(g []ort.InputOutputInfo) string {
	s := make([]string, len(g))
	for i, x := range g {
		s[i] = fmt.Sprintf("%q", x.Name)
	}
	return strings.Join(s, ", ")
}

// orderInputs matches request tensors to the declared inputs, checks each
// against its declaration, and returns them in declared order. Errors are
// INVALID_ARGUMENT and say what was expected and what came.
func orderInputs(spec *bundle.Spec, given []*tensor.Tensor) ([]*tensor.Tensor, error) {
	return orderInputsBatch(spec, given, true)
}

// orderInputsBatch is orderInputs; capBatch false lets the batch axis exceed
// max_batch_size (InferAll splits it).
func orderInputsBatch(spec *bundle.Spec, given []*tensor.Tensor, capBatch bool) ([]*tensor.Tensor, error) {
	if len(given) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "no input tensors; model %q takes %s", spec.Name, describeInputs(spec))
	}
	decl := declared(spec.Inputs)
	byName := map[string]*tensor.Tensor{}
	for i, t := range given {
		name := t.Name
		if name == "" && len(decl) == 1 && len(given) == 1 {
			name = decl[0].name // a single unnamed tensor feeds the single input
		}
		if _, dup := byName[name]; dup {
			return nil, status.Errorf(codes.InvalidArgument, "tensors[%d]: input %q given twice", i, name)
		}
		byName[name] = t
	}
	out := make([]*tensor.Tensor, len(decl))
	for i, d := range decl {
		t, ok := byName[d.name]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "missing input %q; model %q takes %s", d.name, spec.Name, describeInputs(spec))
		}
		delete(byName, d.name)
		if err := checkInput(spec, d, t, capBatch); err != nil {
			return nil, err
		}
		c := *t
		c.Name = d.name
		out[i] = &c
	}
	for name := range byName {
		return nil, status.Errorf(codes.InvalidArgument, "unknown input %q; model %q takes %s", name, spec.Name, describeInputs(spec))
	}
	return out, nil
}

func checkInput(spec *bundle.Spec, d declTensor, t *tensor.Tensor, capBatch bool) error {
	bad := func(format string, args ...any) error {
		return status.Errorf(codes.InvalidArgument, "input %q: "+format, append([]any{d.name}, args...)...)
	}
	if t.DType != d.dtype {
		return bad("data type is %s, model expects %s", orUnset(string(t.DType)), d.dtype)
	}
	want := fullDims(spec, d.dims)
	if len(t.Shape) != len(want) {
		return bad("shape %s has %d axes, model expects %d: %s", tensor.ShapeString(t.Shape), len(t.Shape), len(want), tensor.ShapeString(want))
	}
	for j, w := range want {
		got := t.Shape[j]
		if got <= 0 {
			return bad("shape %s: axis %d is %d, must be > 0", tensor.ShapeString(t.Shape), j, got)
		}
		if w > 0 && got != w {
			return bad("shape %s: axis %d is %d, model expects %s", tensor.ShapeString(t.Shape), j, got, tensor.ShapeString(want))
		}
	}
	if capBatch && spec.MaxBatchSize > 0 && t.Shape[0] > spec.MaxBatchSize {
		return bad("batch of %d exceeds max_batch_size %d", t.Shape[0], spec.MaxBatchSize)
	}
	if len(t.Data) == 0 && t.Device == nil {
		return bad("data is empty")
	}
	if err := t.Check(); err != nil {
		return bad("%v", err)
	}
	return nil
}

func describeInputs(spec *bundle.Spec) string {
	parts := make([]string, len(spec.Inputs))
	for i, in := range spec.Inputs {
		parts[i] = fmt.Sprintf("%q %s%s", in.Name, in.DataType, tensor.ShapeString(fullDims(spec, in.Dims)))
	}
	return strings.Join(parts, ", ")
}

func orUnset(s string) string {
	if s == "" {
		return "unset"
	}
	return s
}
