package onnxbuild

import (
	"strconv"

	"github.com/voxserve/voxserve/tensor"
)

// Hyperdensity is the demo model bundled until the trained reference models
// land: per-voxel probability that a CT voxel is denser than threshold HU,
// p = sigmoid((x - threshold) / width), and per-study score = max p. Acute
// blood is 50-90 HU, so threshold 60 / width 5 flags blood-like voxels (and
// bone: it is a demonstration of the serving path, not a detector).
//
//	input  image  float32 [batch, 1, depth, height, width]  (HU)
//	output probability_map float32 [batch, 1, depth, height, width]
//	output score float32 [batch, 1]
func Hyperdensity(threshold, width float32) Model {
	vol := []Dim{{Param: "batch"}, {Value: 1}, {Param: "depth"}, {Param: "height"}, {Param: "width"}}
	return Model{
		Name:      "hyperdensity",
		Opset:     17,
		DocString: "voxserve demo: sigmoid((HU - threshold) / width); not a medical device",
		Inputs:    []Value{{Name: "image", Type: Float, Shape: vol}},
		Outputs: []Value{
			{Name: "probability_map", Type: Float, Shape: vol},
			{Name: "score", Type: Float, Shape: []Dim{{Param: "batch"}, {Value: 1}}},
		},
		Initializers: []Initializer{
			{Name: "threshold", Float32: []float32{threshold}},
			{Name: "width", Float32: []float32{width}},
		},
		Nodes: []Node{
			{Op: "Sub", Inputs: []string{"image", "threshold"}, Outputs: []string{"centred"}},
			{Op: "Div", Inputs: []string{"centred", "width"}, Outputs: []string{"logit"}},
			{Op: "Sigmoid", Inputs: []string{"logit"}, Outputs: []string{"probability_map"}},
			{Op: "ReduceMax", Inputs: []string{"probability_map"}, Outputs: []string{"score"},
				Attrs: []Attr{Ints("axes", 2, 3, 4), I("keepdims", 0)}},
		},
	}
}

// Affine is a small fixed-shape model for tests: y = x*scale + bias over a
// float32 [batch, dims...] input.
func Affine(dims []int64, scale, bias float32) Model {
	shape := append([]Dim{{Param: "batch"}}, D(dims...)...)
	return Model{
		Name:         "affine",
		Opset:        17,
		Inputs:       []Value{{Name: "x", Type: Float, Shape: shape}},
		Outputs:      []Value{{Name: "y", Type: Float, Shape: shape}},
		Initializers: []Initializer{{Name: "scale", Float32: []float32{scale}}, {Name: "bias", Float32: []float32{bias}}},
		Nodes: []Node{
			{Op: "Mul", Inputs: []string{"x", "scale"}, Outputs: []string{"scaled"}},
			{Op: "Add", Inputs: []string{"scaled", "bias"}, Outputs: []string{"y"}},
		},
	}
}

// MatMulChain computes y = x·x·…·x (k products, with a Tanh between to
// keep values bounded) over a float32 [batch, n, n] input with dynamic n.
// Its cost grows with n³, which tests use to keep a request busy.
func MatMulChain(k int) Model {
	shape := []Dim{{Param: "batch"}, {Param: "n"}, {Param: "n"}}
	m := Model{
		Name:    "matmul_chain",
		Opset:   17,
		Inputs:  []Value{{Name: "x", Type: Float, Shape: shape}},
		Outputs: []Value{{Name: "y", Type: Float, Shape: shape}},
	}
	prev := "x"
	for i := 0; i < k; i++ {
		mm, th := "mm"+strconv.Itoa(i), "t"+strconv.Itoa(i)
		if i == k-1 {
			th = "y"
		}
		m.Nodes = append(m.Nodes,
			Node{Op: "MatMul", Inputs: []string{prev, "x"}, Outputs: []string{mm}},
			Node{Op: "Tanh", Inputs: []string{mm}, Outputs: []string{th}})
		prev = th
	}
	return m
}

// DemoPhantom is the demo's example input: an 8x32x32 volume at 30 HU
// (brain-like) holding a 2x6x10 block at 70 HU (acute-blood-like), 120
// voxels that Hyperdensity(60, 5) flags with p = sigmoid(2).
func DemoPhantom() *tensor.Tensor {
	const z, y, x = 8, 32, 32
	v := make([]float32, z*y*x)
	for k := 0; k < z; k++ {
		for j := 0; j < y; j++ {
			for i := 0; i < x; i++ {
				hu := float32(30)
				if k >= 3 && k < 5 && j >= 10 && j < 16 && i >= 12 && i < 22 {
					hu = 70
				}
				v[(k*y+j)*x+i] = hu
			}
		}
	}
	return tensor.FromFloat32("", []int64{z, y, x}, v)
}

// Threshold2DHalf is Threshold2D for float16 tensors, as a model exported
// in half precision takes and gives them: the image is widened to float32
// for the arithmetic, and both outputs narrowed back.
func Threshold2DHalf(t, k float32) Model {
	m := Threshold2D(t, k)
	m.Name = "threshold2d_half"
	m.Inputs[0].Type = Float16
	m.Outputs[0].Type, m.Outputs[1].Type = Float16, Float16
	for i := range m.Nodes {
		for j, in := range m.Nodes[i].Inputs {
			if in == "image" {
				m.Nodes[i].Inputs[j] = "image32"
			}
		}
		for j, out := range m.Nodes[i].Outputs {
			if out == "probability_map" || out == "score" {
				m.Nodes[i].Outputs[j] = out + "32"
			}
		}
		if m.Nodes[i].Op == "ReduceMax" {
			m.Nodes[i].Inputs[0] = "probability_map32"
		}
	}
	m.Nodes = append([]Node{{Op: "Cast", Inputs: []string{"image"}, Outputs: []string{"image32"}, Attrs: []Attr{I("to", int64(Float))}}}, m.Nodes...)
	m.Nodes = append(m.Nodes,
		Node{Op: "Cast", Inputs: []string{"probability_map32"}, Outputs: []string{"probability_map"}, Attrs: []Attr{I("to", int64(Float16))}},
		Node{Op: "Cast", Inputs: []string{"score32"}, Outputs: []string{"score"}, Attrs: []Attr{I("to", int64(Float16))}})
	return m
}

// Threshold2D is a per-pixel test model for slice layouts: over a float32
// [batch, 1, height, width] input, probability_map = sigmoid((x - t) * k)
// and score = max over the slice, [batch, 1].
func Threshold2D(t, k float32) Model {
	img := []Dim{{Param: "batch"}, {Value: 1}, {Param: "height"}, {Param: "width"}}
	return Model{
		Name:    "threshold2d",
		Opset:   17,
		Inputs:  []Value{{Name: "image", Type: Float, Shape: img}},
		Outputs: []Value{{Name: "probability_map", Type: Float, Shape: img}, {Name: "score", Type: Float, Shape: []Dim{{Param: "batch"}, {Value: 1}}}},
		Initializers: []Initializer{
			{Name: "t", Float32: []float32{t}},
			{Name: "k", Float32: []float32{k}},
		},
		Nodes: []Node{
			{Op: "Sub", Inputs: []string{"image", "t"}, Outputs: []string{"centred"}},
			{Op: "Mul", Inputs: []string{"centred", "k"}, Outputs: []string{"logit"}},
			{Op: "Sigmoid", Inputs: []string{"logit"}, Outputs: []string{"probability_map"}},
			{Op: "ReduceMax", Inputs: []string{"probability_map"}, Outputs: []string{"score"}, Attrs: []Attr{Ints("axes", 2, 3), I("keepdims", 0)}},
		},
	}
}

// Tissue3 is a three-class segmentation model for tests of a background
// class: per voxel, logits [0, (HU - blood)/5, (HU - bone)/50] for
// background, blood and bone, to be read with a softmax.
//
//	input  image   float32 [batch, 1, depth, height, width]  (HU)
//	output logits  float32 [batch, 3, depth, height, width]
func Tissue3(blood, bone float32) Model {
	in := []Dim{{Param: "batch"}, {Value: 1}, {Param: "depth"}, {Param: "height"}, {Param: "width"}}
	out := []Dim{{Param: "batch"}, {Value: 3}, {Param: "depth"}, {Param: "height"}, {Param: "width"}}
	return Model{
		Name:    "tissue3",
		Opset:   17,
		Inputs:  []Value{{Name: "image", Type: Float, Shape: in}},
		Outputs: []Value{{Name: "logits", Type: Float, Shape: out}},
		Initializers: []Initializer{
			{Name: "zero", Float32: []float32{0}}, {Name: "blood", Float32: []float32{blood}}, {Name: "bone", Float32: []float32{bone}},
			{Name: "w_blood", Float32: []float32{5}}, {Name: "w_bone", Float32: []float32{50}},
		},
		Nodes: []Node{
			{Op: "Mul", Inputs: []string{"image", "zero"}, Outputs: []string{"l0"}},
			{Op: "Sub", Inputs: []string{"image", "blood"}, Outputs: []string{"d1"}},
			{Op: "Div", Inputs: []string{"d1", "w_blood"}, Outputs: []string{"l1"}},
			{Op: "Sub", Inputs: []string{"image", "bone"}, Outputs: []string{"d2"}},
			{Op: "Div", Inputs: []string{"d2", "w_bone"}, Outputs: []string{"l2"}},
			{Op: "Concat", Inputs: []string{"l0", "l1", "l2"}, Outputs: []string{"logits"}, Attrs: []Attr{I("axis", 1)}},
		},
	}
}
