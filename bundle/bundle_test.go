package bundle

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/internal/testrepo"

	"github.com/voxserve/voxserve/tensor"
)

const valid = `name: demo
task: both
modalities: [CT]
inputs:
  - name: image
    data_type: float32
    dims: [1, 64, 64]
outputs:
  - name: score
    data_type: float32
    dims: [2]
    kind: scores
    activation: sigmoid
    labels:
      - name: bleed
        code: {scheme: SCT, value: "50960005", meaning: Hemorrhage}
        threshold: 0.3
      - name: other
max_batch_size: 8
`

func TestParseValid(t *testing.T) {
	s, err := Parse("demo/bundle.yaml", []byte(valid))
	require.NoError(t, err)
	assert.Equal(t, "demo", s.Name)
	assert.Equal(t, int64(8), s.MaxBatchSize)
	// Defaults.
	assert.Equal(t, 1, s.InstanceCount)
	assert.Nil(t, s.DynamicBatching, "no dynamic_batching: requests run alone")
	assert.Equal(t, "REJECT", s.Queue.TimeoutAction)
	tr, err := Parse("demo/bundle.yaml", []byte(valid+"triage: {urgent_findings: [bleed]}\n"))
	require.NoError(t, err)
	assert.Equal(t, []string{"bleed"}, tr.Triage.UrgentFindings)
	b, err := Parse("demo/bundle.yaml", []byte(valid+"dynamic_batching: {max_queue_delay_microseconds: 500}\n"))
	require.NoError(t, err)
	tf32 := true
	c, err := Parse("demo/bundle.yaml", []byte(valid+"execution:\n  cuda: {device_id: 1, cudnn_conv_algo_search: HEURISTIC, gpu_mem_limit: 1024, tf32: true}\n"))
	require.NoError(t, err)
	assert.Equal(t, CUDAOptions{DeviceID: 1, CudnnConvAlgoSearch: "HEURISTIC", GPUMemLimit: 1024, TF32: &tf32}, c.Execution.CUDA)
	assert.Equal(t, map[string]string{"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "1024", "use_tf32": "1"},
		c.Execution.CUDA.ProviderOptions())
	trt, err := Parse("demo/bundle.yaml", []byte(valid+"execution:\n  providers: [tensorrt, cuda, cpu]\n  tensorrt: {fp16: true, engine_cache_path: /var/cache/trt, max_workspace_size: 2048}\n"))
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"device_id": "0", "trt_fp16_enable": "1", "trt_engine_cache_enable": "1",
		"trt_engine_cache_path": "/var/cache/trt", "trt_max_workspace_size": "2048"}, trt.Execution.TensorRT.ProviderOptions())
	assert.Equal(t, &DynamicBatching{MaxQueueDelayMicroseconds: 500, PriorityLevels: 2, DefaultPriorityLevel: 2}, b.DynamicBatching)
	assert.Equal(t, DefaultMaxQueueSize, s.Queue.MaxQueueSize)
	assert.Equal(t, []string{"cpu"}, s.Execution.Providers)
	assert.Equal(t, "all", s.Execution.GraphOptimization)
	assert.Equal(t, 1, s.VersionPolicy.Latest)
	assert.Equal(t, 0.3, s.Outputs[0].Labels[0].Threshold)
	assert.Equal(t, DefaultThreshold, s.Outputs[0].Labels[1].Threshold)
	w, err := Parse("demo/bundle.yaml", []byte(valid+"model_warmup:\n  - {name: one}\n  - {name: full, batch_size: 8, count: 2, inputs: {image: {random_data: true}}}\n"))
	require.NoError(t, err)
	assert.Equal(t, []Warmup{{Name: "one", BatchSize: 1, Count: 1},
		{Name: "full", BatchSize: 8, Count: 2, Inputs: map[string]WarmupInput{"image": {RandomData: true}}}}, w.ModelWarmup)
}

func TestParseErrorsNameFileAndField(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(string) string
		wantErr []string
	}{
		{"triage names an unknown finding", func(s string) string { return s + "triage: {urgent_findings: [nothing]}\n" },
			[]string{"triage.urgent_findings[0]: \"nothing\" is not a label of a scores output"}},
		{"triage names an unknown measurement", func(s string) string {
			return s + "triage: {urgent_measurements: [{label: bleed, name: volume, at_least: 30}]}\n"
		}, []string{"triage.urgent_measurements[0]: no measurement \"volume\" of label \"bleed\""}},
		{"bad seg_type", func(s string) string {
			return strings.Replace(s, "    kind: scores", "    kind: scores\n    seg_type: fuzzy", 1)
		},
			[]string{"outputs[0].seg_type: \"fuzzy\" must be binary or fractional"}},
		{"seg_type on scores", func(s string) string {
			return strings.Replace(s, "    kind: scores", "    kind: scores\n    seg_type: fractional", 1)
		},
			[]string{"outputs[0].seg_type: only mask outputs go into a SEG"}},
		{"empty triage", func(s string) string { return s + "triage: {}\n" },
			[]string{"triage: needs urgent_findings or urgent_measurements"}},
		{"category on a scores label", func(s string) string {
			return strings.Replace(s, "      - name: other", "      - name: other\n        category: {scheme: SCT, value: \"91723000\", meaning: Anatomical Structure}", 1)
		}, []string{"outputs[0].labels[1].category: is a segmentation category"}},
		{"unknown field", func(s string) string { return s + "max_batch: 3\n" },
			[]string{"demo/bundle.yaml", "field max_batch not found"}},
		{"unknown nested field", func(s string) string {
			return strings.Replace(s, "    dims: [1, 64, 64]", "    dims: [1, 64, 64]\n    shape: [1]", 1)
		},
			[]string{"demo/bundle.yaml", "field shape not found"}},
		{"missing name", func(s string) string { return strings.Replace(s, "name: demo\n", "", 1) },
			[]string{"demo/bundle.yaml: name: is required"}},
		{"bad name", func(s string) string { return strings.Replace(s, "name: demo", "name: ../etc", 1) },
			[]string{"name: \"../etc\" must be lower case"}},
		{"bad task", func(s string) string { return strings.Replace(s, "task: both", "task: detection", 1) },
			[]string{"task: \"detection\" must be one of classification, segmentation, both"}},
		{"bad dtype", func(s string) string {
			return strings.Replace(s, "data_type: float32\n    dims: [1, 64", "data_type: float33\n    dims: [1, 64", 1)
		},
			[]string{"inputs[0].data_type: unknown data type \"float33\""}},
		{"zero dim", func(s string) string { return strings.Replace(s, "[1, 64, 64]", "[1, 0, 64]", 1) },
			[]string{"inputs[0].dims[1]: 0 must be > 0"}},
		{"no inputs", func(s string) string {
			return strings.Replace(s, "inputs:\n  - name: image\n    data_type: float32\n    dims: [1, 64, 64]\n", "", 1)
		}, []string{"inputs: at least one input is required"}},
		{"duplicate tensor name", func(s string) string { return strings.Replace(s, "  - name: score", "  - name: image", 1) },
			[]string{"outputs[0].name: \"image\" is already used by inputs[0]"}},
		{"bad kind", func(s string) string { return strings.Replace(s, "kind: scores", "kind: boxes", 1) },
			[]string{"outputs[0].kind: \"boxes\" must be one of scores, mask, tensor"}},
		{"bad activation", func(s string) string { return strings.Replace(s, "activation: sigmoid", "activation: relu", 1) },
			[]string{"outputs[0].activation: \"relu\""}},
		{"threshold out of range", func(s string) string { return strings.Replace(s, "threshold: 0.3", "threshold: 1.5", 1) },
			[]string{"outputs[0].labels[0].threshold: 1.5 must be between 0 and 1"}},
		{"incomplete code", func(s string) string { return strings.Replace(s, "meaning: Hemorrhage", "meaning: \"\"", 1) },
			[]string{"outputs[0].labels[0].code: needs scheme, value and meaning"}},
		{"scores without labels", func(s string) string {
			return s[:strings.Index(s, "    labels:")] + "max_batch_size: 8\n"
		}, []string{"outputs[0].labels: a scores output needs at least one label"}},
		{"negative batch", func(s string) string { return strings.Replace(s, "max_batch_size: 8", "max_batch_size: -1", 1) },
			[]string{"max_batch_size: -1 must be >= 0"}},
		{"preferred batch too big", func(s string) string { return s + "dynamic_batching:\n  preferred_batch_size: [4, 16]\n" },
			[]string{"dynamic_batching.preferred_batch_size[1]: 16 must be between 1 and max_batch_size 8"}},
		{"default priority out of range", func(s string) string {
			return s + "dynamic_batching:\n  priority_levels: 2\n  default_priority_level: 3\n"
		}, []string{"dynamic_batching.default_priority_level: 3 must be between 1 and priority_levels 2"}},
		{"batching without a batch axis", func(s string) string {
			return strings.Replace(s, "max_batch_size: 8", "max_batch_size: 0", 1) + "dynamic_batching: {}\n"
		}, []string{"dynamic_batching: needs max_batch_size > 0"}},
		{"negative delay", func(s string) string { return s + "dynamic_batching:\n  max_queue_delay_microseconds: -1\n" },
			[]string{"dynamic_batching.max_queue_delay_microseconds: -1 must be between 0 and 10000000"}},
		{"timeout action", func(s string) string { return s + "queue:\n  timeout_action: DROP\n" },
			[]string{"queue.timeout_action: \"DROP\" must be REJECT or DELAY"}},
		{"cuda options", func(s string) string {
			return s + "execution:\n  cuda: {device_id: -1, cudnn_conv_algo_search: FAST, arena_extend_strategy: grow}\n"
		}, []string{"execution.cuda.device_id: -1 must be >= 0", `execution.cuda.cudnn_conv_algo_search: "FAST" must be EXHAUSTIVE, HEURISTIC or DEFAULT`,
			`execution.cuda.arena_extend_strategy: "grow" must be kNextPowerOfTwo or kSameAsRequested`}},
		{"bad io_binding", func(s string) string { return s + "execution:\n  io_binding: always\n" },
			[]string{`execution.io_binding: "always" must be auto, on or off`}},
		{"io_binding on with a dynamic dim", func(s string) string {
			return strings.Replace(s, "[1, 64, 64]", "[1, -1, 64]", 1) + "execution:\n  io_binding: on\n"
		}, []string{"execution.io_binding: on needs fixed dims, and inputs[0].dims has a dynamic one"}},
		{"bad provider", func(s string) string { return s + "execution:\n  providers: [tpu]\n" },
			[]string{"execution.providers[0]: \"tpu\""}},
		{"warm-up batch too big", func(s string) string { return s + "model_warmup: [{name: full, batch_size: 9}]\n" },
			[]string{"model_warmup[0].batch_size: 9 must be between 1 and max_batch_size 8"}},
		{"warm-up of an unknown input", func(s string) string {
			return s + "model_warmup: [{name: x, inputs: {scan: {zero_data: true}}, count: 101}]\n"
		}, []string{`model_warmup[0].count: 101 must be between 1 and 100`, `model_warmup[0].inputs.scan: no input "scan" is declared`}},
		{"warm-up input", func(s string) string {
			return s + "model_warmup: [{name: x, inputs: {image: {data_type: int16, dims: [1, 64, 32], zero_data: true, random_data: true}}}]\n"
		}, []string{`model_warmup[0].inputs.image.data_type: "int16" differs from the declared "float32"`,
			"model_warmup[0].inputs.image: set one of zero_data and random_data",
			"model_warmup[0].inputs.image.dims[2]: 32 must be the declared 64"}},
		{"warm-up of a dynamic dim", func(s string) string {
			return strings.Replace(s, "[1, 64, 64]", "[1, -1, 64]", 1) + "model_warmup: [{name: x}]\n"
		}, []string{"model_warmup[0].inputs.image.dims: required: the input has a dynamic dim"}},
		{"warm-up dims", func(s string) string {
			return strings.Replace(s, "[1, 64, 64]", "[1, -1, 64]", 1) + "model_warmup: [{name: x, inputs: {image: {dims: [1, 0]}}}]\n"
		}, []string{"model_warmup[0].inputs.image.dims: [1 0] has 2 dims; the input declares 3"}},
		{"warm-up too large", func(s string) string {
			return strings.Replace(s, "[1, 64, 64]", "[1, -1, 64]", 1) + "model_warmup: [{name: x, batch_size: 8, inputs: {image: {dims: [1, 9000000, 64]}}}]\n"
		}, []string{"model_warmup[0]: its inputs take more than the 1073741824 bytes a warm-up may"}},
		{"two version policies", func(s string) string { return s + "version_policy:\n  latest: 2\n  all: true\n" },
			[]string{"version_policy: set exactly one of latest, all, specific"}},
		{"wrong type", func(s string) string { return strings.Replace(s, "max_batch_size: 8", "max_batch_size: eight", 1) },
			[]string{"demo/bundle.yaml", "line", "eight"}},
		{"two documents", func(s string) string { return s + "---\nname: x\n" },
			[]string{"more than one YAML document"}},
		{"empty", func(string) string { return "" }, []string{"demo/bundle.yaml: file is empty"}},
		{"measurement on scores", func(s string) string {
			return strings.Replace(s, "      - name: other\n", "      - name: other\n    measurements: [{name: v, type: volume, label: bleed}]\n", 1)
		}, []string{"outputs[0].measurements[0]: measurements belong to mask outputs, not scores"}},
		{"measurement type", func(s string) string {
			return strings.Replace(s, "      - name: other\n", "      - name: other\n    measurements: [{name: v, type: diameter, label: bleed}]\n", 1)
		}, []string{"outputs[0].measurements[0].type: \"diameter\" must be one of volume"}},
		{"measurement label", func(s string) string {
			return strings.Replace(s, "      - name: other\n", "      - name: other\n    measurements: [{name: v, type: volume, label: clot}]\n", 1)
		}, []string{"outputs[0].measurements[0].label: \"clot\" is not one of the output's labels"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("demo/bundle.yaml", []byte(tt.edit(valid)))
			require.Error(t, err)
			for _, want := range tt.wantErr {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	bad := strings.NewReplacer("task: both", "task: x", "kind: scores", "kind: y").Replace(valid)
	_, err := Parse("b.yaml", []byte(bad))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "task:")
	assert.Contains(t, err.Error(), "outputs[0].kind:")
}

func TestParseTooLarge(t *testing.T) {
	_, err := Parse("b.yaml", make([]byte, MaxFileSize+1))
	require.ErrorContains(t, err, "more than the")
}

func writeBundle(t *testing.T, dir, yaml string, versions ...string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, FileName), []byte(yaml), 0o644))
	for _, v := range versions {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, v), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, v, ModelFile), []byte("onnx"), 0o644))
	}
}

func TestReadAndSelect(t *testing.T) {
	repo := t.TempDir()
	dir := filepath.Join(repo, "demo")
	writeBundle(t, dir, valid, "1", "3", "10")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "notes"), 0o755)) // ignored, as in Triton

	b, err := Read(dir)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 3, 10}, b.Versions)
	assert.Equal(t, []int64{10}, b.Select())
	assert.Equal(t, filepath.Join(dir, "3", ModelFile), b.ModelPath(3))

	b.Spec.VersionPolicy = &VersionPolicy{Latest: 2}
	assert.Equal(t, []int64{3, 10}, b.Select())
	b.Spec.VersionPolicy = &VersionPolicy{All: true}
	assert.Equal(t, []int64{1, 3, 10}, b.Select())
	b.Spec.VersionPolicy = &VersionPolicy{Specific: []int64{3, 7}}
	assert.Equal(t, []int64{3}, b.Select())

	names, err := ListRepository(repo)
	require.NoError(t, err)
	assert.Equal(t, []string{"demo"}, names)
}

func TestReadErrors(t *testing.T) {
	repo := t.TempDir()
	writeBundle(t, filepath.Join(repo, "other"), valid, "1")
	_, err := Read(filepath.Join(repo, "other"))
	assert.ErrorContains(t, err, `name: "demo" must match the folder name "other"`)

	writeBundle(t, filepath.Join(repo, "demo"), valid)
	_, err = Read(filepath.Join(repo, "demo"))
	assert.ErrorContains(t, err, "no version folders")

	require.NoError(t, os.MkdirAll(filepath.Join(repo, "demo", "2"), 0o755))
	_, err = Read(filepath.Join(repo, "demo"))
	assert.ErrorContains(t, err, "version folder has no model.onnx")

	_, err = Read(filepath.Join(repo, "missing"))
	assert.ErrorContains(t, err, "cannot read")
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("name: x\ntask: both\n"))
	f.Add([]byte("inputs: [{name: a, dims: [-1, 99999999999999]}]"))
	f.Add([]byte("&a [*a, *a]"))
	f.Add([]byte(valid + "model_warmup: [{name: w, batch_size: 8, count: 2, inputs: {image: {random_data: true, dims: [1, 64, 64]}}}]\n"))
	if b, err := os.ReadFile("../models/hyperdensity/bundle.yaml"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// Whatever parses must satisfy the invariants the engine relies on.
		if s.Name == "" || len(s.Inputs) == 0 || len(s.Outputs) == 0 || s.InstanceCount < 1 || s.Queue.MaxQueueSize < 1 {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
		for _, w := range s.ModelWarmup { // made in memory at load
			var total int64
			for _, in := range s.Inputs {
				n, err := tensor.NumElements(append([]int64{max(w.BatchSize, 1)}, w.WarmupDims(in)...))
				if err != nil || slices.Contains(w.WarmupDims(in), -1) {
					t.Fatalf("accepted warm-up %q with dims %v: %v", w.Name, w.WarmupDims(in), err)
				}
				total += n * int64(tensor.DType(in.DataType).Size())
			}
			if total > MaxWarmupBytes || w.Count < 1 {
				t.Fatalf("accepted warm-up %+v (%d bytes)", w, total)
			}
		}
	})
}

func TestReservedInstancesNeedAnotherInstance(t *testing.T) {
	_, err := Parse("demo/bundle.yaml", []byte(valid+"dynamic_batching: {reserved_instances: 1}\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "dynamic_batching.reserved_instances: 1 must be between 0 and instance_count - 1 (0)")
	_, err = Parse("demo/bundle.yaml", []byte(valid+"instance_count: 2\ndynamic_batching: {reserved_instances: 1}\n"))
	require.NoError(t, err)
}

const withPreprocessing = `name: demo
task: both
inputs:
  - name: image
    data_type: float32
    dims: [1, 16, 16]
preprocessing:
  windows: [{name: brain, center: 40, width: 80}]
  in_plane_size: [16, 16]
  layout: slices
outputs:
  - name: mask
    data_type: float32
    dims: [1, 16, 16]
    kind: mask
    labels: [{name: x}]
max_batch_size: 2
`

func TestPreprocessingValidation(t *testing.T) {
	s, err := Parse("demo/bundle.yaml", []byte(withPreprocessing))
	require.NoError(t, err)
	assert.False(t, s.PreprocessSpec().Half)
	half, err := Parse("demo/bundle.yaml", []byte(strings.ReplaceAll(withPreprocessing, "float32", "float16")))
	require.NoError(t, err)
	assert.True(t, half.PreprocessSpec().Half, "a float16 model gets float16 input")
	for _, tt := range []struct {
		name, old, new, want string
	}{
		{"input type", "data_type: float32\n    dims: [1, 16, 16]\npre", "data_type: int16\n    dims: [1, 16, 16]\npre",
			`inputs[0].data_type: "int16": preprocessing writes float32 or float16`},
		{"channels", "dims: [1, 16, 16]\npre", "dims: [3, 16, 16]\npre", "inputs[0].dims[0]: 3 channels, but the preprocessing makes 1"},
		{"in-plane size", "in_plane_size: [16, 16]", "in_plane_size: [16, 32]", "inputs[0].dims: [1 16 16] does not match in_plane_size [16 32]"},
		{"mask type", "    data_type: float32\n    dims: [1, 16, 16]\n    kind: mask", "    data_type: int32\n    dims: [1, 16, 16]\n    kind: mask",
			`outputs[0].data_type: a mask output must be float32 or float16, not "int32"`},
		{"float16 dynamic", "    data_type: float32\n    dims: [1, 16, 16]\n    kind: mask", "    data_type: float16\n    dims: [1, -1, 16]\n    kind: mask",
			"outputs[0].dims: [1 -1 16]: a float16 output needs fixed dims"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			y := strings.Replace(withPreprocessing, tt.old, tt.new, 1)
			require.NotEqual(t, withPreprocessing, y, "the edit applies")
			_, err := Parse("demo/bundle.yaml", []byte(y))
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

// A softmax mask output may name one channel the background: it takes the
// threshold no probability reaches, so its voxels are labelled 0.
func TestBackgroundLabel(t *testing.T) {
	s, err := Parse("tissue/bundle.yaml", []byte(testrepo.TissueYAML))
	require.NoError(t, err)
	labels := s.Outputs[0].Labels
	assert.True(t, labels[0].Background)
	assert.Equal(t, float64(BackgroundThreshold), labels[0].Threshold)
	assert.Equal(t, DefaultThreshold, labels[1].Threshold)

	for _, tc := range []struct{ name, from, to, want string }{
		{"on a sigmoid output", "activation: softmax", "activation: sigmoid", "labels[0].background: the background competes with the other channels"},
		{"alone", "      - {name: blood}\n      - {name: bone}\n    measurements:\n      - {name: volume, type: volume, label: blood}\n", "", "labels[0].background: a background needs at least one other label"},
		{"with a threshold", "{name: background, background: true}", "{name: background, background: true, threshold: 0.5}", "labels[0].threshold: a background label takes no threshold"},
		{"with a code", "{name: background, background: true}", "{name: background, background: true, code: {scheme: SCT, value: \"1\", meaning: x}}", "a background label is no segment"},
		{"twice", "{name: blood}", "{name: blood, background: true}", "2 background labels; at most one"},
		{"measured", "label: blood}", "label: background}", "measurements[0].label: \"background\" is the background"},
		{"on a scores output", "kind: mask", "kind: scores", "only a mask output has a background class"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Contains(t, testrepo.TissueYAML, tc.from)
			_, err := Parse("tissue/bundle.yaml", []byte(strings.Replace(testrepo.TissueYAML, tc.from, tc.to, 1)))
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
