package onnxbuild

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Reorient wraps an ONNX model whose named 3D inputs and outputs are
// [batch, channels, x, y, z] arrays in RAS orientation (MONAI's and
// NIfTI's convention: x toward the patient's right, y anterior, z
// superior) so that they become voxserve's [batch, channels, z, y, x] in
// LPS (DICOM's: x toward the left, y posterior). Each input goes through a
// reversal of its y and x axes and a transpose before the original graph;
// each output through the inverse after it. The rest of the model is kept
// byte for byte.
func Reorient(model []byte, inputs, outputs []string) ([]byte, error) {
	top, err := fields(model)
	if err != nil {
		return nil, fmt.Errorf("onnx model: %w", err)
	}
	var out []byte
	found := false
	for _, f := range top {
		if f.num != 7 || f.typ != protowire.BytesType { // ModelProto.graph
			out = append(out, f.raw...)
			continue
		}
		g, err := reorientGraph(f.val, inputs, outputs)
		if err != nil {
			return nil, err
		}
		out = appendBytes(out, 7, g)
		found = true
	}
	if !found {
		return nil, fmt.Errorf("onnx model: no graph")
	}
	return out, nil
}

// ras is the inner name of a wrapped value.
func ras(name string) string { return name + "__voxserve_ras" }

// perm swaps x and z: its own inverse.
var perm = []int64{0, 1, 4, 3, 2}

func reorientGraph(graph []byte, inputs, outputs []string) ([]byte, error) {
	fs, err := fields(graph)
	if err != nil {
		return nil, fmt.Errorf("onnx graph: %w", err)
	}
	renameIn, renameOut := map[string]string{}, map[string]string{}
	for _, n := range inputs {
		renameIn[n] = ras(n)
	}
	for _, n := range outputs {
		renameOut[n] = ras(n)
	}
	const minInt64 = math.MinInt64
	flip := []Initializer{
		{Name: "voxserve_flip_starts", Dims: []int64{2}, Int64: []int64{-1, -1}},
		{Name: "voxserve_flip_ends", Dims: []int64{2}, Int64: []int64{minInt64, minInt64}},
		{Name: "voxserve_flip_axes", Dims: []int64{2}, Int64: []int64{3, 4}},
		{Name: "voxserve_flip_steps", Dims: []int64{2}, Int64: []int64{-1, -1}},
	}
	slice := func(in, out string) Node {
		return Node{Op: "Slice", Inputs: []string{in, flip[0].Name, flip[1].Name, flip[2].Name, flip[3].Name}, Outputs: []string{out}}
	}
	var g []byte
	for _, n := range inputs {
		g = appendBytes(g, 1, slice(n, n+"__voxserve_flipped").marshal())
		g = appendBytes(g, 1, Node{Op: "Transpose", Inputs: []string{n + "__voxserve_flipped"}, Outputs: []string{ras(n)},
			Attrs: []Attr{Ints("perm", perm...)}}.marshal())
	}
	seenIn, seenOut := map[string]bool{}, map[string]bool{}
	for _, f := range fs {
		switch {
		case f.num == 1 && f.typ == protowire.BytesType: // node
			nb, err := renameNode(f.val, renameIn, renameOut)
			if err != nil {
				return nil, err
			}
			g = appendBytes(g, 1, nb)
		case (f.num == 11 || f.num == 12) && f.typ == protowire.BytesType: // input, output
			name, err := valueName(f.val)
			if err != nil {
				return nil, err
			}
			want := renameIn
			if f.num == 12 {
				want = renameOut
			}
			if _, ok := want[name]; !ok {
				g = append(g, f.raw...)
				continue
			}
			vb, err := permuteValue(f.val)
			if err != nil {
				return nil, fmt.Errorf("onnx graph: %s: %w", name, err)
			}
			g = appendBytes(g, f.num, vb)
			if f.num == 11 {
				seenIn[name] = true
			} else {
				seenOut[name] = true
			}
		case f.num == 13 && f.typ == protowire.BytesType: // value_info: shapes of the renamed values are now stale
			name, err := valueName(f.val)
			if err != nil {
				return nil, err
			}
			if _, a := renameIn[name]; !a {
				if _, b := renameOut[name]; !b {
					g = append(g, f.raw...)
				}
			}
		default:
			g = append(g, f.raw...)
		}
	}
	for _, n := range inputs {
		if !seenIn[n] {
			return nil, fmt.Errorf("onnx graph: no input %q", n)
		}
	}
	for _, n := range outputs {
		if !seenOut[n] {
			return nil, fmt.Errorf("onnx graph: no output %q", n)
		}
		g = appendBytes(g, 1, Node{Op: "Transpose", Inputs: []string{ras(n)}, Outputs: []string{n + "__voxserve_zyx"},
			Attrs: []Attr{Ints("perm", perm...)}}.marshal())
		g = appendBytes(g, 1, slice(n+"__voxserve_zyx", n).marshal())
	}
	for _, t := range flip {
		g = appendBytes(g, 5, t.marshal())
	}
	return g, nil
}

// renameNode renames a node's inputs (graph inputs now come wrapped) and
// outputs (graph outputs are now made by the wrapper).
func renameNode(node []byte, in, out map[string]string) ([]byte, error) {
	fs, err := fields(node)
	if err != nil {
		return nil, fmt.Errorf("onnx node: %w", err)
	}
	var b []byte
	for _, f := range fs {
		names := map[protowire.Number]map[string]string{1: in, 2: out}[f.num]
		if names != nil && f.typ == protowire.BytesType {
			if r, ok := names[string(f.val)]; ok {
				b = appendString(b, f.num, r)
				continue
			}
		}
		b = append(b, f.raw...)
	}
	return b, nil
}

func valueName(v []byte) (string, error) {
	fs, err := fields(v)
	if err != nil {
		return "", fmt.Errorf("onnx value info: %w", err)
	}
	for _, f := range fs {
		if f.num == 1 && f.typ == protowire.BytesType {
			return string(f.val), nil
		}
	}
	return "", fmt.Errorf("onnx value info without a name")
}

// permuteValue reorders a ValueInfoProto's five dims by perm:
// ValueInfoProto.type(2) -> TypeProto.tensor_type(1) -> shape(2) -> dim(1).
func permuteValue(v []byte) ([]byte, error) {
	return rewrite(v, 2, func(typ []byte) ([]byte, error) {
		return rewrite(typ, 1, func(tensor []byte) ([]byte, error) {
			return rewrite(tensor, 2, func(shape []byte) ([]byte, error) {
				fs, err := fields(shape)
				if err != nil {
					return nil, err
				}
				var dims []field
				var rest []byte
				for _, f := range fs {
					if f.num == 1 {
						dims = append(dims, f)
					} else {
						rest = append(rest, f.raw...)
					}
				}
				if len(dims) != 5 {
					return nil, fmt.Errorf("%d dims; a 3D volume has 5 (batch, channels, x, y, z)", len(dims))
				}
				var b []byte
				for _, p := range perm {
					b = append(b, dims[p].raw...)
				}
				return append(b, rest...), nil
			})
		})
	})
}

// rewrite replaces the message field num of msg with what f makes of it.
func rewrite(msg []byte, num protowire.Number, f func([]byte) ([]byte, error)) ([]byte, error) {
	fs, err := fields(msg)
	if err != nil {
		return nil, err
	}
	var b []byte
	done := false
	for _, x := range fs {
		if x.num == num && x.typ == protowire.BytesType && !done {
			v, err := f(x.val)
			if err != nil {
				return nil, err
			}
			b = appendBytes(b, num, v)
			done = true
			continue
		}
		b = append(b, x.raw...)
	}
	if !done {
		return nil, fmt.Errorf("no shape")
	}
	return b, nil
}

// field is one protobuf field: its bytes as they stand (raw), and for a
// length-delimited field its contents (val).
type field struct {
	num protowire.Number
	typ protowire.Type
	raw []byte
	val []byte
}

func fields(b []byte) ([]field, error) {
	var out []field
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		f := field{num: num, typ: typ, raw: b[:n+m]}
		if typ == protowire.BytesType {
			f.val, _ = protowire.ConsumeBytes(b[n:])
		}
		out = append(out, f)
		b = b[n+m:]
	}
	return out, nil
}

// IONames lists an ONNX model's graph inputs (less those that are
// initializers) and outputs.
func IONames(model []byte) (inputs, outputs []string, err error) {
	top, err := fields(model)
	if err != nil {
		return nil, nil, fmt.Errorf("onnx model: %w", err)
	}
	for _, f := range top {
		if f.num != 7 || f.typ != protowire.BytesType {
			continue
		}
		gs, err := fields(f.val)
		if err != nil {
			return nil, nil, fmt.Errorf("onnx graph: %w", err)
		}
		inits := map[string]bool{}
		for _, g := range gs {
			if g.num == 5 && g.typ == protowire.BytesType {
				ts, err := fields(g.val)
				if err != nil {
					return nil, nil, err
				}
				for _, t := range ts {
					if t.num == 8 && t.typ == protowire.BytesType {
						inits[string(t.val)] = true
					}
				}
			}
		}
		for _, g := range gs {
			if (g.num == 11 || g.num == 12) && g.typ == protowire.BytesType {
				n, err := valueName(g.val)
				if err != nil {
					return nil, nil, err
				}
				if g.num == 11 && !inits[n] {
					inputs = append(inputs, n)
				} else if g.num == 12 {
					outputs = append(outputs, n)
				}
			}
		}
		return inputs, outputs, nil
	}
	return nil, nil, fmt.Errorf("onnx model: no graph")
}
