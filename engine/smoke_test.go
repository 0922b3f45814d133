package engine

import (
	"context"
	"testing"

	"github.com/voxserve/voxserve/tensor"
)

func TestSmoke(t *testing.T) {
	if err := Init(""); err != nil {
		t.Fatal(err)
	}
	r := NewRegistry("../models", nil)
	if err := r.LoadAll(); err != nil {
		t.Fatal(err)
	}
	m, done, err := r.Acquire("hyperdensity", "")
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	in := tensor.FromFloat32("image", []int64{1, 1, 1, 2, 2}, []float32{0, 60, 100, -1000})
	outs, tm, err := m.Infer(context.Background(), []*tensor.Tensor{in})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range outs {
		v, _ := o.Float32s()
		t.Log(o.Name, o.Shape, v, tm)
	}
}
