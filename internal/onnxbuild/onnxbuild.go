// Package onnxbuild writes small ONNX models without Python: enough of the
// ONNX protobuf schema (onnx.proto3) to declare a graph of standard operators.
// It exists so that tests and the demo bundle use real ONNX files that are
// reproducible byte for byte from Go source, and, with the same pieces, so
// that `voxctl bundle import-monai` can wrap a MONAI model to voxserve's
// layout (Reorient).
package onnxbuild

import (
	"encoding/binary"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Element types, as TensorProto.DataType numbers them.
const (
	Float   int32 = 1
	Uint8   int32 = 2
	Int8    int32 = 3
	Uint16  int32 = 4
	Int16   int32 = 5
	Int32   int32 = 6
	Int64   int32 = 7
	Bool    int32 = 9
	Float16 int32 = 10
	Double  int32 = 11
)

// Dim is one dimension of a value's shape: a fixed size, or a symbolic name
// (a dynamic axis such as the batch).
type Dim struct {
	Value int64
	Param string
}

// D returns fixed dimensions.
func D(v ...int64) []Dim {
	out := make([]Dim, len(v))
	for i, x := range v {
		out[i] = Dim{Value: x}
	}
	return out
}

// Value declares a graph input or output.
type Value struct {
	Name  string
	Type  int32
	Shape []Dim
}

// Attr is a node attribute; set exactly one of the value fields.
type Attr struct {
	Name   string
	Float  *float32
	Int    *int64
	Ints   []int64
	Floats []float32
	String string
}

// F and I make attribute values.
func F(name string, v float32) Attr { return Attr{Name: name, Float: &v} }
func I(name string, v int64) Attr   { return Attr{Name: name, Int: &v} }

// Ints makes an integer-list attribute.
func Ints(name string, v ...int64) Attr { return Attr{Name: name, Ints: v} }

// Node is one operator application.
type Node struct {
	Op      string
	Inputs  []string
	Outputs []string
	Attrs   []Attr
}

// Initializer is a constant tensor (weights, scalars).
type Initializer struct {
	Name    string
	Dims    []int64
	Float32 []float32
	Int64   []int64
}

// Model is a whole single-graph model.
type Model struct {
	Name         string
	Opset        int64
	Inputs       []Value
	Outputs      []Value
	Nodes        []Node
	Initializers []Initializer
	DocString    string
}

// Marshal encodes the model as an ONNX ModelProto.
func (m Model) Marshal() []byte {
	opset := m.Opset
	if opset == 0 {
		opset = 17
	}
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType) // ir_version
	b = protowire.AppendVarint(b, 8)
	b = appendString(b, 2, "voxserve-onnxbuild") // producer_name
	b = appendBytes(b, 7, m.graph())             // graph
	var op []byte
	op = appendString(op, 1, "")
	op = protowire.AppendTag(op, 2, protowire.VarintType)
	op = protowire.AppendVarint(op, uint64(opset))
	b = appendBytes(b, 8, op) // opset_import
	return b
}

func (m Model) graph() []byte {
	var g []byte
	for _, n := range m.Nodes {
		g = appendBytes(g, 1, n.marshal())
	}
	g = appendString(g, 2, m.Name)
	for _, t := range m.Initializers {
		g = appendBytes(g, 5, t.marshal())
	}
	if m.DocString != "" {
		g = appendString(g, 10, m.DocString)
	}
	for _, v := range m.Inputs {
		g = appendBytes(g, 11, v.marshal())
	}
	for _, v := range m.Outputs {
		g = appendBytes(g, 12, v.marshal())
	}
	return g
}

func (n Node) marshal() []byte {
	var b []byte
	for _, in := range n.Inputs {
		b = appendString(b, 1, in)
	}
	for _, out := range n.Outputs {
		b = appendString(b, 2, out)
	}
	b = appendString(b, 4, n.Op)
	for _, a := range n.Attrs {
		b = appendBytes(b, 5, a.marshal())
	}
	return b
}

// AttributeProto.AttributeType values.
const (
	attrFloat  = 1
	attrInt    = 2
	attrString = 3
	attrFloats = 6
	attrInts   = 7
)

func (a Attr) marshal() []byte {
	var b []byte
	b = appendString(b, 1, a.Name)
	var typ uint64
	switch {
	case a.Float != nil:
		b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(*a.Float))
		typ = attrFloat
	case a.Int != nil:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(*a.Int))
		typ = attrInt
	case a.Ints != nil:
		for _, v := range a.Ints {
			b = protowire.AppendTag(b, 8, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(v))
		}
		typ = attrInts
	case a.Floats != nil:
		for _, v := range a.Floats {
			b = protowire.AppendTag(b, 7, protowire.Fixed32Type)
			b = protowire.AppendFixed32(b, math.Float32bits(v))
		}
		typ = attrFloats
	default:
		b = appendString(b, 4, a.String)
		typ = attrString
	}
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	return protowire.AppendVarint(b, typ)
}

func (t Initializer) marshal() []byte {
	var b []byte
	for _, d := range t.Dims {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(d))
	}
	typ, raw := Float, make([]byte, 0, 4*len(t.Float32)+8*len(t.Int64))
	if t.Int64 != nil {
		typ = Int64
		for _, v := range t.Int64 {
			raw = binary.LittleEndian.AppendUint64(raw, uint64(v))
		}
	} else {
		for _, v := range t.Float32 {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
	}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(typ))
	b = appendString(b, 8, t.Name)
	return appendBytes(b, 9, raw) // raw_data
}

func (v Value) marshal() []byte {
	var shape []byte
	for _, d := range v.Shape {
		var dim []byte
		if d.Param != "" {
			dim = appendString(dim, 2, d.Param)
		} else {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(d.Value))
		}
		shape = appendBytes(shape, 1, dim)
	}
	var tensor []byte
	tensor = protowire.AppendTag(tensor, 1, protowire.VarintType)
	tensor = protowire.AppendVarint(tensor, uint64(v.Type))
	tensor = appendBytes(tensor, 2, shape)
	var typ []byte
	typ = appendBytes(typ, 1, tensor)
	var b []byte
	b = appendString(b, 1, v.Name)
	return appendBytes(b, 2, typ)
}

func appendBytes(b []byte, field protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendString(b []byte, field protowire.Number, v string) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, v)
}
