package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/tensor"
)

// monaiBundle writes a MONAI bundle whose network works as MONAI's do, on
// [batch, channel, x, y, z] arrays in RAS, and whose answer depends on
// where a voxel is: the structure is found in the patient's right half
// only (RAS x index 4..7 of 8). A wrong flip or transpose on import moves
// it.
func monaiBundle(t *testing.T, inference string) string {
	t.Helper()
	src := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(src, "configs"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(src, "models"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "configs", "metadata.json"), []byte(`{
  "name": "Toy Spleen CT Segmentation", "version": "0.1.0",
  "description": "A toy network for voxserve's import test.",
  "copyright": "Copyright (c) voxserve tests", "data_source": "none: hand-written weights",
  "network_data_format": {
    "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
      "spatial_shape": [8, 8, 8], "dtype": "float32", "value_range": [0, 1], "is_patch_data": true}},
    "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
      "spatial_shape": [8, 8, 8], "dtype": "float32", "value_range": [0, 1], "is_patch_data": true,
      "channel_def": {"0": "background", "1": "spleen"}}}
  }
}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(src, "configs", "inference.json"), []byte(inference), 0o644))
	ramp := make([]float32, 8)
	for x := range ramp {
		if x < 4 {
			ramp[x] = -1000 // RAS x 0..3: the patient's left
		}
	}
	vol := func(c int64) []onnxbuild.Dim {
		return []onnxbuild.Dim{{Param: "batch"}, {Value: c}, {Value: 8}, {Value: 8}, {Value: 8}}
	}
	m := onnxbuild.Model{
		Name: "toy", Opset: 17,
		Inputs:  []onnxbuild.Value{{Name: "image", Type: onnxbuild.Float, Shape: vol(1)}},
		Outputs: []onnxbuild.Value{{Name: "pred", Type: onnxbuild.Float, Shape: vol(2)}},
		Initializers: []onnxbuild.Initializer{
			{Name: "zero", Float32: []float32{0}}, {Name: "half", Float32: []float32{0.5}}, {Name: "gain", Float32: []float32{50}},
			{Name: "ramp", Dims: []int64{1, 1, 8, 1, 1}, Float32: ramp},
		},
		Nodes: []onnxbuild.Node{
			{Op: "Mul", Inputs: []string{"image", "zero"}, Outputs: []string{"bg"}},
			{Op: "Sub", Inputs: []string{"image", "half"}, Outputs: []string{"c"}},
			{Op: "Mul", Inputs: []string{"c", "gain"}, Outputs: []string{"g"}},
			{Op: "Add", Inputs: []string{"g", "ramp"}, Outputs: []string{"fg"}},
			{Op: "Concat", Inputs: []string{"bg", "fg"}, Outputs: []string{"pred"}, Attrs: []onnxbuild.Attr{onnxbuild.I("axis", 1)}},
		},
	}
	require.NoError(t, os.WriteFile(filepath.Join(src, "models", "model.onnx"), m.Marshal(), 0o644))
	return src
}

// As MONAI's spleen_ct_segmentation bundle writes it, references included.
const spleenInference = `{
  "imports": ["$import glob"],
  "roi": [8, 8, 8],
  "preprocessing": {"_target_": "Compose", "transforms": [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 1.0], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": true},
    {"_target_": "EnsureTyped", "keys": "image"}]},
  "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 4, "overlap": 0.5},
  "postprocessing": {"_target_": "Compose", "transforms": [
    {"_target_": "Activationsd", "keys": "pred", "softmax": true},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": true}]}
}`

func TestImportMONAI(t *testing.T) {
	src := monaiBundle(t, spleenInference)
	repo := t.TempDir()
	out, _, err := runCLI("bundle", "import-monai", src, "--out", repo)
	require.NoError(t, err, out)
	assert.Contains(t, out, "imported")
	assert.Contains(t, out, `note: MONAI blends overlapping patches with mode "constant"`, "the spleen config keeps MONAI's default blending")
	y, err := os.ReadFile(filepath.Join(repo, "toy-spleen-ct-segmentation", "bundle.yaml"))
	require.NoError(t, err)
	for _, want := range []string{
		"name: toy-spleen-ct-segmentation", "modalities: [CT]", "dims: [1, 8, 8, 8]", "orientation: LPS",
		"target_spacing: [1, 1, 1]", "clip: [-57, 164, 0, 1]", "layout: patches", "patch_size: [8, 8, 8]", "overlap: 0.5",
		"activation: softmax", `{name: "background", background: true}`, `{name: "spleen"}`, `label: "spleen"`, "max_batch_size: 4",
	} {
		assert.Contains(t, string(y), want)
	}

	// A CT of 8x8x8 1 mm voxels, axial, LPS: column index x grows toward
	// the patient's left. The network finds the structure in the right
	// half: columns 0..3.
	study := dicomwrite.Series{Rows: 8, Cols: 8, Slices: 8, Spacing: [3]float64{1, 1, 1}, Orientation: [6]float64{1, 0, 0, 0, 1, 0},
		Slope: 1, Intercept: -1024, Modality: "CT", BodyPart: "ABDOMEN", StudyUID: "1.2.3", SeriesUID: "1.2.3.9",
		Value: func(i, j, k int) int32 { return 1024 + 100 + int32((i+j+k)%3) }}
	files, err := study.Encode()
	require.NoError(t, err)
	dir := t.TempDir()
	for i, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.dcm", i)), f, 0o644))
	}
	outDir := t.TempDir()
	out, _, err = runCLI("infer", "--model", "toy-spleen-ct-segmentation", "--model-repository", repo, "--dicom", dir, "--gpu", "off", "--output-dir", outDir)
	require.NoError(t, err, out)
	f, err := os.Open(filepath.Join(outDir, "pred_labels.npy"))
	require.NoError(t, err)
	defer f.Close()
	lab, err := tensor.ReadNpy(f, 0)
	require.NoError(t, err)
	require.Equal(t, []int64{8, 8, 8}, lab.Shape)
	for z := 0; z < 8; z++ {
		for y := 0; y < 8; y++ {
			for x := 0; x < 8; x++ {
				want := byte(0)
				if x < 4 {
					want = 2 // spleen: labels [background, spleen]
				}
				require.Equal(t, want, lab.Data[(z*8+y)*8+x], "voxel z=%d y=%d x=%d", z, y, x)
			}
		}
	}
	assert.Contains(t, out, "spleen")
}

func TestImportMONAIRefusesWhatItCannotReproduce(t *testing.T) {
	for _, tc := range []struct{ name, from, to, want string }{
		{"another orientation", `"axcodes": "RAS"`, `"axcodes": "LPI"`, `axcodes "LPI"; voxserve wraps RAS models only`},
		{"an unknown transform", `{"_target_": "EnsureTyped", "keys": "image"}`, `{"_target_": "CropForegroundd", "keys": "image"}`, "preprocessing.transforms[5] (CropForegroundd): not a transform voxserve reproduces"},
		{"no clipping", `"clip": true`, `"clip": false`, "clip false"},
		{"another inferer", `"SlidingWindowInferer"`, `"SimpleInferer"`, "inferer: SimpleInferer"},
		{"no activation", `{"_target_": "Activationsd", "keys": "pred", "softmax": true},`, ``, "no Activationsd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Contains(t, spleenInference, tc.from)
			src := monaiBundle(t, strings.Replace(spleenInference, tc.from, tc.to, 1))
			_, code, err := runCLI("bundle", "import-monai", src, "--out", t.TempDir())
			assert.Equal(t, 1, code)
			assert.ErrorContains(t, err, tc.want)
		})
	}
	_, code, err := runCLI("bundle", "import-monai", t.TempDir(), "--out", t.TempDir())
	assert.Equal(t, 1, code)
	assert.ErrorContains(t, err, "metadata.json")
}
