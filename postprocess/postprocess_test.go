package postprocess

import (
	"bytes"
	"compress/zlib"
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/tensor"
)

func spec(outputs ...bundle.Output) *bundle.Spec { return &bundle.Spec{Name: "t", Outputs: outputs} }

func TestFindingsActivationsAndBatchMax(t *testing.T) {
	sigmoid := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	tests := []struct {
		name       string
		activation string
		values     []float32 // [batch=2, labels=2]
		want       []float64
	}{
		{"none", "none", []float32{0.1, 0.9, 0.7, 0.2}, []float64{0.7, 0.9}},
		{"sigmoid", "sigmoid", []float32{-2, 0, 1, -1}, []float64{sigmoid(1), sigmoid(0)}},
		{"softmax", "softmax", []float32{0, 0, 2, 0}, []float64{math.Exp(2) / (math.Exp(2) + 1), 0.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := bundle.Output{Name: "s", Kind: "scores", Activation: tt.activation,
				Labels: []bundle.Label{{Name: "a", Threshold: 0.6}, {Name: "b", Threshold: 0.95}}}
			res, err := Run(spec(out), []*tensor.Tensor{tensor.FromFloat32("s", []int64{2, 2}, tt.values)}, true, nil)
			require.NoError(t, err)
			require.Len(t, res.Findings, 2)
			for i, f := range res.Findings {
				assert.InDelta(t, tt.want[i], f.Probability, 1e-6)
				assert.Equal(t, f.Probability >= f.Threshold, f.Present)
			}
		})
	}
}

func inflate(t *testing.T, m *Mask) []byte {
	r, err := zlib.NewReader(bytes.NewReader(m.Compressed()))
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}

func TestLabelMaps(t *testing.T) {
	one := bundle.Output{Name: "m", Kind: "mask", Activation: "none", Labels: []bundle.Label{{Name: "lesion", Threshold: 0.5}}}
	res, err := Run(spec(one), []*tensor.Tensor{tensor.FromFloat32("m", []int64{1, 1, 2, 2}, []float32{0.2, 0.5, 0.9, 0.49})}, true, nil)
	require.NoError(t, err)
	require.Len(t, res.Masks, 1)
	assert.Equal(t, []int64{2, 2}, res.Masks[0].Dims)
	assert.Equal(t, []byte{0, 1, 1, 0}, inflate(t, &res.Masks[0]))

	// Two channels, softmax: argmax where it clears its threshold.
	two := bundle.Output{Name: "m", Kind: "mask", Activation: "softmax",
		Labels: []bundle.Label{{Name: "left", Threshold: 0.5}, {Name: "right", Threshold: 0.9}}}
	logits := []float32{
		3, 0, 0, 0, // channel 0
		0, 3, 1, 0, // channel 1
	}
	res, err = Run(spec(two), []*tensor.Tensor{tensor.FromFloat32("m", []int64{1, 2, 4}, logits)}, true, nil)
	require.NoError(t, err)
	// voxel 0: left (0.95); 1: right (0.95); 2: right 0.73 < 0.9 -> 0; 3: tie 0.5 -> left at 0.5.
	assert.Equal(t, []byte{1, 2, 0, 1}, res.Masks[0].Voxels)

	// A batch keeps its batch axis.
	res, err = Run(spec(one), []*tensor.Tensor{tensor.FromFloat32("m", []int64{2, 1, 2}, []float32{1, 0, 0, 1})}, true, nil)
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 2}, res.Masks[0].Dims)
	assert.Equal(t, []byte{1, 0, 0, 1}, res.Masks[0].Voxels)

	// Skipped when masks are not wanted.
	res, err = Run(spec(one), []*tensor.Tensor{tensor.FromFloat32("m", []int64{1, 1, 2}, []float32{1, 0})}, false, nil)
	require.NoError(t, err)
	assert.Empty(t, res.Masks)
}

func TestShapeErrors(t *testing.T) {
	one := bundle.Output{Name: "m", Kind: "mask", Labels: []bundle.Label{{Name: "a"}}}
	_, err := Run(spec(one), []*tensor.Tensor{tensor.FromFloat32("m", []int64{2}, []float32{1, 2})}, true, nil)
	assert.ErrorContains(t, err, "want [batch, channels, spatial...]")
	_, err = Run(spec(one), []*tensor.Tensor{tensor.FromFloat32("m", []int64{1, 2, 1}, []float32{1, 2})}, true, nil)
	assert.ErrorContains(t, err, "has 2 channels, bundle declares 1 labels")
	sc := bundle.Output{Name: "s", Kind: "scores", Labels: []bundle.Label{{Name: "a"}, {Name: "b"}}}
	_, err = Run(spec(sc), []*tensor.Tensor{tensor.FromFloat32("s", []int64{3}, []float32{1, 2, 3})}, true, nil)
	assert.ErrorContains(t, err, "not a multiple of its 2 labels")
	_, err = Run(spec(sc), nil, true, nil)
	assert.ErrorContains(t, err, "model gave 0 outputs, bundle declares 1")
}

func TestEmptyStudy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		values   []float32
		modality string
		empty    bool
	}{
		{"none", nil, "CT", true},
		{"constant", []float32{-1024, -1024, -1024}, "CT", true},
		{"constant MR", []float32{0, 0}, "MR", true},
		{"all air", []float32{-1024, -1000, -950}, "CT", true},
		{"air in MR is just low signal", []float32{-1024, -1000}, "MR", false},
		{"tissue", []float32{-1024, 40}, "CT", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.empty, EmptyStudy(tc.values, tc.modality) != "")
		})
	}
	r := &Result{Findings: []Finding{{Label: "x", Probability: 0.9, Present: true}},
		Masks: []Mask{{Voxels: []uint8{1, 2, 0}}}, Measurements: []Measurement{{Name: "v", Value: 3}}}
	r.Negative("every voxel of the study is 0")
	assert.False(t, r.Findings[0].Present)
	assert.Zero(t, r.Findings[0].Probability)
	assert.Equal(t, []uint8{0, 0, 0}, r.Masks[0].Voxels)
	assert.Zero(t, r.Measurements[0].Value)
	assert.Contains(t, r.Warnings[0], "nothing to find")
}

// The single-channel sigmoid path decides on the logit; its decisions must
// be the exact path's, at the threshold too.
func TestLabelVoxelsSigmoidFastPathIsExact(t *testing.T) {
	for _, th := range []float64{0.5, 0.8657, 0.95, 0.05, 1e-9} {
		xt := math.Log(th / (1 - th))
		var v []float32
		for _, d := range []float64{0, 1e-7, -1e-7, 1e-3, -1e-3, 2, -2, 50, -50} {
			x := float32(xt + d)
			v = append(v, x, math.Nextafter32(x, float32(math.Inf(1))), math.Nextafter32(x, float32(math.Inf(-1))))
		}
		got := make([]uint8, len(v))
		LabelVoxels(v, 1, 1, len(v), "sigmoid", []float64{th}, got)
		for i, x := range v {
			want := uint8(0)
			if 1/(1+math.Exp(-float64(x))) >= th {
				want = 1
			}
			assert.Equal(t, want, got[i], "threshold %v logit %v", th, x)
		}
	}
}

func TestTriage(t *testing.T) {
	spec := &bundle.Spec{Triage: &bundle.Triage{UrgentFindings: []string{"ich"},
		UrgentMeasurements: []bundle.TriageMeasurement{{Label: "bleed", Name: "volume", AtLeast: 30}}}}
	for _, tc := range []struct {
		name   string
		r      Result
		want   string
		reason string
	}{
		{"nothing", Result{Findings: []Finding{{Label: "ich", Probability: 0.2, Threshold: 0.5}}}, TriageRoutine, "no urgent finding"},
		{"finding", Result{Findings: []Finding{{Label: "ich", Probability: 0.9, Threshold: 0.5, Present: true}}}, TriageUrgent, "ich present"},
		{"measurement", Result{Measurements: []Measurement{{Label: "bleed", Name: "volume", Value: 31, Unit: "mL"}}}, TriageUrgent, "bleed volume 31 mL >= 30"},
		{"small", Result{Measurements: []Measurement{{Label: "bleed", Name: "volume", Value: 29, Unit: "mL"}}}, TriageRoutine, "no urgent finding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reasons := Triage(spec, &tc.r)
			assert.Equal(t, tc.want, got)
			require.NotEmpty(t, reasons)
			assert.Contains(t, reasons[0], tc.reason)
		})
	}
	none, reasons := Triage(&bundle.Spec{}, &Result{})
	assert.Empty(t, none)
	assert.Empty(t, reasons)
}

func TestFractions(t *testing.T) {
	decl := bundle.Output{Name: "m", Kind: "mask", Activation: "sigmoid", Labels: []bundle.Label{{Name: "a"}, {Name: "b"}}}
	// Two channels of three voxels; sigmoid per channel.
	out := tensor.FromFloat32("m", []int64{1, 2, 1, 1, 3}, []float32{0, 100, -100, float32(math.NaN()), 2, -2})
	fr, err := Fractions(decl, out)
	require.NoError(t, err)
	assert.Equal(t, []uint8{128, 255, 0}, fr[0])
	assert.Equal(t, []uint8{0, uint8(math.Round(255 / (1 + math.Exp(-2)))), uint8(math.Round(255 / (1 + math.Exp(2))))}, fr[1])
	decl.Activation = "softmax"
	fr, err = Fractions(decl, tensor.FromFloat32("m", []int64{1, 2, 1}, []float32{1, 1}))
	require.NoError(t, err)
	assert.Equal(t, []uint8{128}, fr[0])
	assert.Equal(t, []uint8{128}, fr[1])
	_, err = Fractions(decl, tensor.FromFloat32("m", []int64{1, 3, 1}, []float32{1, 1, 1}))
	assert.ErrorContains(t, err, "3 channels, bundle declares 2 labels")
}
