package monai

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/internal/onnxbuild"
)

func TestPlanResolvesReferences(t *testing.T) {
	var cfg map[string]any
	require.NoError(t, json.Unmarshal([]byte(`{
	  "roi": [96, 96, 64], "pix": [1.5, 1.5, 2.0],
	  "spacing": {"_target_": "Spacingd", "keys": "image", "pixdim": "@pix"},
	  "preprocessing": {"_target_": "Compose", "transforms": ["@spacing",
	    {"_target_": "monai.transforms.NormalizeIntensityd", "keys": "image"}]},
	  "inferer": {"_target_": "monai.inferers.SlidingWindowInferer", "roi_size": "@roi"},
	  "postprocessing": [{"_target_": "Activationsd", "keys": "pred", "sigmoid": true}]
	}`), &cfg))
	p, err := plan(cfg)
	require.NoError(t, err)
	assert.Equal(t, []float64{1.5, 1.5, 2}, p.spacing)
	assert.True(t, p.zscore)
	assert.Equal(t, []int{96, 96, 64}, p.roi)
	assert.Equal(t, 0.25, p.overlap, "MONAI's default")
	assert.Equal(t, "sigmoid", p.activation)
	assert.Equal(t, "constant", p.blend, "MONAI's default blending, which voxserve's Gaussian differs from")

	cfg["inferer"] = map[string]any{"_target_": "SlidingWindowInferer", "roi_size": "@roi", "mode": "gaussian"}
	p, err = plan(cfg)
	require.NoError(t, err)
	assert.Empty(t, p.blend, "MONAI's gaussian with its default sigma_scale is voxserve's blending")
}

func TestChannelLabels(t *testing.T) {
	l, err := channelLabels(tensorFormat{NumChannels: 3, ChannelDef: map[string]string{"0": "background", "1": "liver", "2": "tumour"}})
	require.NoError(t, err)
	assert.Equal(t, []label{{"background", true}, {"liver", false}, {"tumour", false}}, l)
	_, err = channelLabels(tensorFormat{NumChannels: 2, ChannelDef: map[string]string{"0": "a", "5": "b"}})
	assert.ErrorContains(t, err, `channel_def key "5"`)
	_, err = channelLabels(tensorFormat{NumChannels: 3, ChannelDef: map[string]string{"0": "a", "1": "b"}})
	assert.ErrorContains(t, err, "3 output channels, channel_def names 2")
	_, err = channelLabels(tensorFormat{})
	assert.ErrorContains(t, err, "channel_def is needed")
}

// FuzzPlan: an inference.json from outside never panics the importer.
func FuzzPlan(f *testing.F) {
	f.Add([]byte(`{"preprocessing": {"transforms": [{"_target_": "Spacingd", "pixdim": "@x"}]}, "x": [1, 2, 3], "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [1, 2, 3]}}`))
	f.Add([]byte(`{"postprocessing": "@postprocessing"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var cfg map[string]any
		if json.Unmarshal(b, &cfg) != nil {
			return
		}
		_, _ = plan(cfg)
	})
}

// FuzzReorient: a model file from outside never panics the wrapper.
func FuzzReorient(f *testing.F) {
	m := onnxbuild.Affine([]int64{1, 2, 3, 4}, 2, 1).Marshal()
	f.Add(m)
	f.Add([]byte{0x3a, 0x02, 0x5a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = onnxbuild.Reorient(b, []string{"x"}, []string{"y"})
		_, _, _ = onnxbuild.IONames(b)
	})
}
