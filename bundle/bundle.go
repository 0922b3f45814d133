// Package bundle reads and validates model bundles: a model repository holds
// one folder per model, <name>/bundle.yaml, with numbered version folders,
// <name>/<version>/model.onnx, as in Triton's model repository.
//
// Parsing is strict: unknown fields are errors, and every error names the
// file and the field so that an MLOps engineer can fix a bundle from the log
// line alone.
package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/voxserve/voxserve/tensor"
)

// FileName is the bundle descriptor's name inside a model folder.
const FileName = "bundle.yaml"

// ModelFile is the ONNX file's name inside a version folder.
const ModelFile = "model.onnx"

// MaxFileSize caps bundle.yaml; a descriptor is a page of YAML, not megabytes.
const MaxFileSize = 1 << 20

// Spec is the content of bundle.yaml.
type Spec struct {
	// Name must equal the model folder's name.
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Task is classification, segmentation or both.
	Task string `yaml:"task"`
	// Modalities and BodyParts are the DICOM Modality (0008,0060) and Body
	// Part Examined (0018,0015) values the model accepts; empty accepts any.
	Modalities []string `yaml:"modalities"`
	BodyParts  []string `yaml:"body_parts"`

	Inputs  []Input  `yaml:"inputs"`
	Outputs []Output `yaml:"outputs"`
	// Preprocessing turns a study (volume or DICOM) into the model input.
	Preprocessing *Preprocessing `yaml:"preprocessing"`

	// MaxBatchSize follows Triton: when > 0 the model has a leading batch
	// axis that dims do not list, and requests may batch up to this size.
	MaxBatchSize int64 `yaml:"max_batch_size"`
	// InstanceCount is how many requests one version runs concurrently.
	InstanceCount int `yaml:"instance_count"`
	// DynamicBatching, when present, lets the scheduler merge requests of
	// the same shape into one batch (Triton's dynamic_batching). Absent,
	// every request runs as its own batch.
	DynamicBatching *DynamicBatching `yaml:"dynamic_batching"`
	Queue           QueuePolicy      `yaml:"queue"`
	VersionPolicy   *VersionPolicy   `yaml:"version_policy"`
	Execution       Execution        `yaml:"execution"`
	Provenance      Provenance       `yaml:"provenance"`
	// Triage rules; absent means the response carries no triage.
	Triage *Triage `yaml:"triage"`
	// ModelWarmup are requests run at load, before the version is ready.
	ModelWarmup []Warmup `yaml:"model_warmup"`
}

// Input declares one model input tensor.
type Input struct {
	Name     string `yaml:"name"`
	DataType string `yaml:"data_type"`
	// Dims exclude the batch axis when max_batch_size > 0; -1 is a dynamic axis.
	Dims []int64 `yaml:"dims"`
	// Layout documents the axes, e.g. NCDHW; informational.
	Layout string `yaml:"layout"`
}

// Output declares one model output tensor and how to read it.
type Output struct {
	Name     string  `yaml:"name"`
	DataType string  `yaml:"data_type"`
	Dims     []int64 `yaml:"dims"`
	// Kind says what the tensor means: scores (one value per label, giving
	// findings), mask (per-voxel probabilities or logits, giving label maps),
	// or tensor (returned as is).
	Kind string `yaml:"kind"`
	// Activation is applied before thresholds: none, sigmoid or softmax.
	Activation string  `yaml:"activation"`
	Labels     []Label `yaml:"labels"`
	// MinComponentMM3 drops connected components of a mask smaller than
	// this (specks), before measurements.
	MinComponentMM3 float64 `yaml:"min_component_mm3"`
	// Measurements computed on a mask output's label map.
	Measurements []MeasurementSpec `yaml:"measurements"`
	// SEGType is how a DICOM SEG stores a mask output: binary (default,
	// the thresholded label map) or fractional (each label's probability,
	// 0-255, on the source grid).
	SEGType string `yaml:"seg_type"`
}

// MeasurementSpec declares one measurement of a mask output.
type MeasurementSpec struct {
	// Name is what the response and reports call it, e.g. "hemorrhage volume".
	Name string `yaml:"name"`
	// Type: volume (mL), craniocaudal_length (cm), max_axial_area (cm2),
	// mean_intensity (HU for CT), side_fraction (of Label over itself plus
	// the Right or Left label on its side).
	Type  string `yaml:"type"`
	Label string `yaml:"label"`
	Right string `yaml:"right"`
	Left  string `yaml:"left"`
}

// Label is one class of a scores or mask output.
type Label struct {
	Name string `yaml:"name"`
	// Code identifies the finding in a coding scheme (SNOMED CT, RadLex).
	Code *Code `yaml:"code"`
	// Threshold turns a probability into a decision; the site may tune it.
	// Absent (or 0) means DefaultThreshold.
	Threshold float64 `yaml:"threshold"`
	// Category is the DICOM SEG Segmented Property Category of a mask
	// label (CID 7150), e.g. SCT 49755003 Morphologically Abnormal
	// Structure for a lesion; absent means SCT 91723000 Anatomical
	// Structure.
	Category *Code `yaml:"category"`
	// Background marks the background class of a softmax mask output, for
	// models trained with one: voxels where it wins are labelled 0, and it
	// is no segment. It takes no threshold (BackgroundThreshold, which no
	// probability reaches, stands in) and no code.
	Background bool `yaml:"background"`
}

// BackgroundThreshold is a background label's threshold: above any
// probability, so that a voxel whose most probable channel is the
// background is labelled 0 by the same rule as any voxel below its
// channel's threshold, on the CPU and on the GPU alike.
const BackgroundThreshold = 2

// Triage derives a worklist priority from the findings: the study is
// urgent when any rule holds, routine otherwise.
type Triage struct {
	// UrgentFindings are scores labels whose presence makes a study urgent.
	UrgentFindings []string `yaml:"urgent_findings"`
	// UrgentMeasurements make a study urgent when a measurement reaches a
	// value.
	UrgentMeasurements []TriageMeasurement `yaml:"urgent_measurements"`
}

// TriageMeasurement is one measurement rule of Triage.
type TriageMeasurement struct {
	Label   string  `yaml:"label"`
	Name    string  `yaml:"name"`
	AtLeast float64 `yaml:"at_least"`
}

// Code is a coded concept, as DICOM writes them.
type Code struct {
	Scheme  string `yaml:"scheme"` // e.g. SCT, RADLEX
	Value   string `yaml:"value"`
	Meaning string `yaml:"meaning"`
}

// QueuePolicy bounds the work waiting for a version, in Triton's vocabulary.
type QueuePolicy struct {
	// MaxQueueSize is how many requests may wait; 0 means the default (64).
	MaxQueueSize int `yaml:"max_queue_size"`
	// DefaultTimeoutMicroseconds bounds a request's time in the queue when
	// the client sets no deadline; 0 means no limit.
	DefaultTimeoutMicroseconds int64 `yaml:"default_timeout_microseconds"`
	// TimeoutAction is what happens when that default timeout passes:
	// REJECT (the default: DEADLINE_EXCEEDED) or DELAY (keep waiting).
	TimeoutAction string `yaml:"timeout_action"`
}

// DynamicBatching configures the scheduler in Triton's vocabulary.
type DynamicBatching struct {
	// MaxQueueDelayMicroseconds is how long the oldest request of a batch
	// may wait for more to join it.
	MaxQueueDelayMicroseconds int64 `yaml:"max_queue_delay_microseconds"`
	// PreferredBatchSize: a batch of one of these sizes goes at once.
	PreferredBatchSize []int64 `yaml:"preferred_batch_size"`
	// PriorityLevels are the priority lanes, 1 the highest; requests of a
	// higher lane always go first. Default 2: 1 is STAT, 2 routine.
	PriorityLevels int `yaml:"priority_levels"`
	// DefaultPriorityLevel is the lane of a request that names none;
	// default the lowest.
	DefaultPriorityLevel int `yaml:"default_priority_level"`
	// MaxBatchBytes caps a batch's input bytes as well as its size (3D
	// patches are large); 0 means no cap.
	MaxBatchBytes int64 `yaml:"max_batch_bytes"`
	// ReservedInstances are instances that only priority level 1 (STAT)
	// may take: lower lanes never use the last N free instances, so that
	// a STAT request need not wait for a running routine batch.
	ReservedInstances int `yaml:"reserved_instances"`
}

// VersionPolicy says which versions load at start, as in Triton: the latest
// N, all, or a specific list. Exactly one field may be set.
type VersionPolicy struct {
	Latest   int     `yaml:"latest"`
	All      bool    `yaml:"all"`
	Specific []int64 `yaml:"specific"`
}

// Execution selects where and how the model runs.
type Execution struct {
	// Providers in order of preference: cpu (always available), cuda,
	// tensorrt.
	Providers []string `yaml:"providers"`
	// IntraOpThreads: 0 lets the server choose from the machine's cores.
	IntraOpThreads int `yaml:"intra_op_threads"`
	InterOpThreads int `yaml:"inter_op_threads"`
	// GraphOptimization: all (default), extended, basic or disabled.
	GraphOptimization string `yaml:"graph_optimization"`
	// AllowSpinning lets ONNX Runtime's thread pools spin while they wait
	// for work (ONNX Runtime's own default). voxserve turns it off by
	// default: spinning threads take the cores that gRPC and the other
	// model instances need (on 2 cores, 1.5x the throughput without it;
	// bench/results/ort-spinning-cpu-2core.md).
	AllowSpinning bool `yaml:"allow_spinning"`
	// IOBinding binds the session's inputs and outputs to buffers
	// preallocated per instance for the largest batch, in the memory of
	// the provider the session got (device memory under CUDA, so the
	// model reads the batch where it was assembled and nothing is
	// allocated per run): auto (the default: on for a session on the GPU,
	// off on the CPU, where it saves nothing), on, or off. It needs every
	// input and output dim fixed; auto turns it off otherwise.
	IOBinding string `yaml:"io_binding"`
	// CUDA configures ONNX Runtime's CUDA execution provider.
	CUDA CUDAOptions `yaml:"cuda"`
	// TensorRT configures ONNX Runtime's TensorRT execution provider.
	TensorRT TensorRTOptions `yaml:"tensorrt"`
}

// TensorRTOptions are ONNX Runtime's TensorRT provider options. The
// provider builds an engine per input shape on first use (minutes for a
// large model): fixed shapes and an engine cache keep that off the hot path.
type TensorRTOptions struct {
	DeviceID int `yaml:"device_id"`
	// FP16 lets TensorRT run layers in half precision.
	FP16 bool `yaml:"fp16"`
	// EngineCachePath keeps built engines across restarts (empty: no cache).
	EngineCachePath string `yaml:"engine_cache_path"`
	// MaxWorkspaceSize caps TensorRT's scratch memory, bytes (0: default).
	MaxWorkspaceSize int64 `yaml:"max_workspace_size"`
}

// ProviderOptions are the options as ONNX Runtime names them.
func (t TensorRTOptions) ProviderOptions() map[string]string {
	m := map[string]string{"device_id": strconv.Itoa(t.DeviceID)}
	if t.FP16 {
		m["trt_fp16_enable"] = "1"
	}
	if t.EngineCachePath != "" {
		m["trt_engine_cache_enable"] = "1"
		m["trt_engine_cache_path"] = t.EngineCachePath
	}
	if t.MaxWorkspaceSize > 0 {
		m["trt_max_workspace_size"] = strconv.FormatInt(t.MaxWorkspaceSize, 10)
	}
	return m
}

// CUDAOptions are ONNX Runtime's CUDA provider options; zero values keep
// ONNX Runtime's defaults.
type CUDAOptions struct {
	DeviceID int `yaml:"device_id"`
	// CudnnConvAlgoSearch: EXHAUSTIVE, HEURISTIC or DEFAULT. Fixed input
	// shapes make EXHAUSTIVE a one-time cost; it runs again per new shape.
	CudnnConvAlgoSearch string `yaml:"cudnn_conv_algo_search"`
	// GPUMemLimit caps the provider's memory arena, bytes (0: no cap).
	GPUMemLimit int64 `yaml:"gpu_mem_limit"`
	// ArenaExtendStrategy: kNextPowerOfTwo or kSameAsRequested.
	ArenaExtendStrategy string `yaml:"arena_extend_strategy"`
	// TF32 allows TensorFloat-32 matrix math (faster, ~1e-3 relative error).
	TF32 *bool `yaml:"tf32"`
}

// ProviderOptions are the options as ONNX Runtime names them.
func (c CUDAOptions) ProviderOptions() map[string]string {
	m := map[string]string{"device_id": strconv.Itoa(c.DeviceID)}
	if c.CudnnConvAlgoSearch != "" {
		m["cudnn_conv_algo_search"] = c.CudnnConvAlgoSearch
	}
	if c.GPUMemLimit > 0 {
		m["gpu_mem_limit"] = strconv.FormatInt(c.GPUMemLimit, 10)
	}
	if c.ArenaExtendStrategy != "" {
		m["arena_extend_strategy"] = c.ArenaExtendStrategy
	}
	if c.TF32 != nil {
		m["use_tf32"] = "0"
		if *c.TF32 {
			m["use_tf32"] = "1"
		}
	}
	return m
}

// Provenance records how the model was made and what it is for.
type Provenance struct {
	IntendedUse  string             `yaml:"intended_use"`
	TrainingData string             `yaml:"training_data"`
	Metrics      map[string]float64 `yaml:"metrics"`
	License      string             `yaml:"license"`
}

// Defaults applied where a bundle leaves a field out.
const (
	DefaultMaxQueueSize = 64
	DefaultInstances    = 1
	DefaultThreshold    = 0.5
)

var (
	nameRE           = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	tasks            = []string{"classification", "segmentation", "both"}
	outputKinds      = []string{"scores", "mask", "tensor"}
	activations      = []string{"none", "sigmoid", "softmax"}
	providers        = []string{"cpu", "cuda", "tensorrt"}
	optimization     = []string{"all", "extended", "basic", "disabled"}
	measurementTypes = []string{"volume", "craniocaudal_length", "max_axial_area", "mean_intensity", "side_fraction"}
)

// FieldError is a validation error that names the file and the field.
type FieldError struct {
	File  string
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg)
}

// Parse decodes and validates a bundle.yaml. file names the source in errors.
func Parse(file string, data []byte) (*Spec, error) {
	if len(data) > MaxFileSize {
		return nil, &FieldError{File: file, Msg: fmt.Sprintf("file is %d bytes, more than the %d allowed", len(data), MaxFileSize)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var s Spec
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FieldError{File: file, Msg: "file is empty"}
		}
		return nil, &FieldError{File: file, Msg: strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n ", "")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &FieldError{File: file, Msg: "more than one YAML document"}
	}
	s.applyDefaults()
	if err := s.validate(file); err != nil {
		return nil, err
	}
	for i := range s.Outputs {
		for j := range s.Outputs[i].Labels {
			if l := &s.Outputs[i].Labels[j]; l.Background {
				l.Threshold = BackgroundThreshold
			}
		}
	}
	return &s, nil
}

func (s *Spec) applyDefaults() {
	if s.InstanceCount == 0 {
		s.InstanceCount = DefaultInstances
	}
	if s.Queue.MaxQueueSize == 0 {
		s.Queue.MaxQueueSize = DefaultMaxQueueSize
	}
	if s.Queue.TimeoutAction == "" {
		s.Queue.TimeoutAction = "REJECT"
	}
	if d := s.DynamicBatching; d != nil {
		if d.PriorityLevels == 0 {
			d.PriorityLevels = 2
		}
		if d.DefaultPriorityLevel == 0 {
			d.DefaultPriorityLevel = d.PriorityLevels
		}
	}
	if s.VersionPolicy == nil {
		s.VersionPolicy = &VersionPolicy{Latest: 1}
	}
	if len(s.Execution.Providers) == 0 {
		s.Execution.Providers = []string{"cpu"}
	}
	if s.Execution.IOBinding == "" {
		s.Execution.IOBinding = "auto"
	}
	if s.Execution.GraphOptimization == "" {
		s.Execution.GraphOptimization = "all"
	}
	for i := range s.ModelWarmup {
		w := &s.ModelWarmup[i]
		if w.BatchSize == 0 && s.MaxBatchSize > 0 {
			w.BatchSize = 1
		}
		if w.Count == 0 {
			w.Count = 1
		}
	}
	for i := range s.Outputs {
		o := &s.Outputs[i]
		if o.Activation == "" {
			o.Activation = "none"
		}
		for j := range o.Labels {
			if o.Labels[j].Threshold == 0 && !o.Labels[j].Background {
				o.Labels[j].Threshold = DefaultThreshold
			}
		}
	}
}

func (s *Spec) validate(file string) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{File: file, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if s.Name == "" {
		bad("name", "is required")
	} else if !nameRE.MatchString(s.Name) {
		bad("name", "%q must be lower case letters, digits, '.', '_' or '-' (at most 63)", s.Name)
	}
	if !oneOf(s.Task, tasks) {
		bad("task", "%q must be one of %s", s.Task, strings.Join(tasks, ", "))
	}
	if len(s.Inputs) == 0 {
		bad("inputs", "at least one input is required")
	}
	if len(s.Outputs) == 0 {
		bad("outputs", "at least one output is required")
	}
	if s.MaxBatchSize < 0 {
		bad("max_batch_size", "%d must be >= 0", s.MaxBatchSize)
	}
	if s.InstanceCount < 0 || s.InstanceCount > 64 {
		bad("instance_count", "%d must be between 1 and 64", s.InstanceCount)
	}
	if s.Queue.MaxQueueSize < 0 {
		bad("queue.max_queue_size", "%d must be >= 0", s.Queue.MaxQueueSize)
	}
	if s.Queue.DefaultTimeoutMicroseconds < 0 {
		bad("queue.default_timeout_microseconds", "%d must be >= 0", s.Queue.DefaultTimeoutMicroseconds)
	}
	if a := s.Queue.TimeoutAction; a != "REJECT" && a != "DELAY" {
		bad("queue.timeout_action", "%q must be REJECT or DELAY", a)
	}
	if d := s.DynamicBatching; d != nil {
		if s.MaxBatchSize == 0 {
			bad("dynamic_batching", "needs max_batch_size > 0 (a model without a batch axis cannot batch)")
		}
		if d.MaxQueueDelayMicroseconds < 0 || d.MaxQueueDelayMicroseconds > 10_000_000 {
			bad("dynamic_batching.max_queue_delay_microseconds", "%d must be between 0 and 10000000", d.MaxQueueDelayMicroseconds)
		}
		for i, p := range d.PreferredBatchSize {
			if p < 1 || (s.MaxBatchSize > 0 && p > s.MaxBatchSize) {
				bad(fmt.Sprintf("dynamic_batching.preferred_batch_size[%d]", i), "%d must be between 1 and max_batch_size %d", p, s.MaxBatchSize)
			}
		}
		if d.PriorityLevels < 1 || d.PriorityLevels > 16 {
			bad("dynamic_batching.priority_levels", "%d must be between 1 and 16", d.PriorityLevels)
		}
		if d.DefaultPriorityLevel < 1 || d.DefaultPriorityLevel > d.PriorityLevels {
			bad("dynamic_batching.default_priority_level", "%d must be between 1 and priority_levels %d", d.DefaultPriorityLevel, d.PriorityLevels)
		}
		if d.MaxBatchBytes < 0 {
			bad("dynamic_batching.max_batch_bytes", "%d must be >= 0", d.MaxBatchBytes)
		}
		if d.ReservedInstances < 0 || (d.ReservedInstances > 0 && d.ReservedInstances >= max(s.InstanceCount, 1)) {
			bad("dynamic_batching.reserved_instances", "%d must be between 0 and instance_count - 1 (%d)", d.ReservedInstances, max(s.InstanceCount, 1)-1)
		}
	}
	names := map[string]string{}
	checkTensor := func(field, name, dtype string, dims []int64) {
		if name == "" {
			bad(field+".name", "is required")
		} else if prev, dup := names[name]; dup {
			bad(field+".name", "%q is already used by %s", name, prev)
		} else {
			names[name] = field
		}
		if _, err := tensor.ParseDType(dtype); err != nil {
			bad(field+".data_type", "%v", err)
		}
		if len(dims) == 0 && s.MaxBatchSize == 0 {
			bad(field+".dims", "is required (a scalar model input is not supported)")
		}
		for j, d := range dims {
			if d == 0 || d < -1 {
				bad(fmt.Sprintf("%s.dims[%d]", field, j), "%d must be > 0, or -1 for a dynamic axis", d)
			}
		}
	}
	for i, in := range s.Inputs {
		checkTensor(fmt.Sprintf("inputs[%d]", i), in.Name, in.DataType, in.Dims)
	}
	for i, out := range s.Outputs {
		field := fmt.Sprintf("outputs[%d]", i)
		checkTensor(field, out.Name, out.DataType, out.Dims)
		if !oneOf(out.Kind, outputKinds) {
			bad(field+".kind", "%q must be one of %s", out.Kind, strings.Join(outputKinds, ", "))
		}
		if !oneOf(out.Activation, activations) {
			bad(field+".activation", "%q must be one of %s", out.Activation, strings.Join(activations, ", "))
		}
		if (out.Kind == "scores" || out.Kind == "mask") && len(out.Labels) == 0 {
			bad(field+".labels", "a %s output needs at least one label", out.Kind)
		}
		if out.Kind == "scores" || out.Kind == "mask" {
			if out.DataType != string(tensor.Float32) && out.DataType != string(tensor.Float16) {
				bad(field+".data_type", "a %s output must be float32 or float16, not %q", out.Kind, out.DataType)
			}
		}
		if out.DataType == string(tensor.Float16) {
			if slices.ContainsFunc(out.Dims, func(d int64) bool { return d < 0 }) {
				// onnxruntime_go reads float16 outputs only into tensors
				// allocated before the run.
				bad(field+".dims", "%v: a float16 output needs fixed dims", out.Dims)
			}
		}
		if out.SEGType != "" && out.SEGType != "binary" && out.SEGType != "fractional" {
			bad(field+".seg_type", "%q must be binary or fractional", out.SEGType)
		} else if out.SEGType != "" && out.Kind != "mask" {
			bad(field+".seg_type", "only mask outputs go into a SEG, not %s", out.Kind)
		}
		if out.MinComponentMM3 < 0 {
			bad(field+".min_component_mm3", "%g must be >= 0", out.MinComponentMM3)
		}
		labels := map[string]bool{} // what measurements may refer to
		for _, l := range out.Labels {
			labels[l.Name] = !l.Background
		}
		for j, m := range out.Measurements {
			mf := fmt.Sprintf("%s.measurements[%d]", field, j)
			if out.Kind != "mask" {
				bad(mf, "measurements belong to mask outputs, not %s", out.Kind)
			}
			if m.Name == "" {
				bad(mf+".name", "is required")
			}
			if !oneOf(m.Type, measurementTypes) {
				bad(mf+".type", "%q must be one of %s", m.Type, strings.Join(measurementTypes, ", "))
			}
			for _, ref := range []struct{ f, v string }{{"label", m.Label}, {"right", m.Right}, {"left", m.Left}} {
				if (ref.f == "label" || m.Type == "side_fraction") && !labels[ref.v] {
					if _, ok := labels[ref.v]; ok {
						bad(mf+"."+ref.f, "%q is the background; nothing is measured on it", ref.v)
					} else {
						bad(mf+"."+ref.f, "%q is not one of the output's labels", ref.v)
					}
				}
			}
		}
		backgrounds := 0
		for j, l := range out.Labels {
			lf := fmt.Sprintf("%s.labels[%d]", field, j)
			if l.Name == "" {
				bad(lf+".name", "is required")
			}
			if l.Threshold < 0 || l.Threshold > 1 {
				bad(lf+".threshold", "%g must be between 0 and 1", l.Threshold)
			}
			if l.Code != nil && (l.Code.Scheme == "" || l.Code.Value == "" || l.Code.Meaning == "") {
				bad(lf+".code", "needs scheme, value and meaning")
			}
			if l.Category != nil && (l.Category.Scheme == "" || l.Category.Value == "" || l.Category.Meaning == "") {
				bad(lf+".category", "needs scheme, value and meaning")
			}
			if l.Category != nil && out.Kind != "mask" {
				bad(lf+".category", "is a segmentation category; only mask labels take one")
			}
			if l.Background {
				backgrounds++
				switch {
				case out.Kind != "mask":
					bad(lf+".background", "only a mask output has a background class, not a %s output", out.Kind)
				case out.Activation != "softmax" && out.Activation != "none":
					bad(lf+".background", "the background competes with the other channels for each voxel: activation softmax (or none, for probabilities), not %s", out.Activation)
				case len(out.Labels) < 2:
					bad(lf+".background", "a background needs at least one other label")
				case l.Threshold != 0:
					bad(lf+".threshold", "a background label takes no threshold")
				case l.Code != nil || l.Category != nil:
					bad(lf, "a background label is no segment: it takes no code or category")
				}
			}
		}
		if backgrounds > 1 {
			bad(field+".labels", "%d background labels; at most one", backgrounds)
		}
	}
	if tr := s.Triage; tr != nil {
		scores, measures := map[string]bool{}, map[string]bool{}
		for _, out := range s.Outputs {
			for _, l := range out.Labels {
				if out.Kind == "scores" {
					scores[l.Name] = true
				}
			}
			for _, m := range out.Measurements {
				measures[m.Label+"\x00"+m.Name] = true
			}
		}
		if len(tr.UrgentFindings) == 0 && len(tr.UrgentMeasurements) == 0 {
			bad("triage", "needs urgent_findings or urgent_measurements")
		}
		for i, f := range tr.UrgentFindings {
			if !scores[f] {
				bad(fmt.Sprintf("triage.urgent_findings[%d]", i), "%q is not a label of a scores output", f)
			}
		}
		for i, m := range tr.UrgentMeasurements {
			if !measures[m.Label+"\x00"+m.Name] {
				bad(fmt.Sprintf("triage.urgent_measurements[%d]", i), "no measurement %q of label %q is declared", m.Name, m.Label)
			}
		}
	}
	if vp := s.VersionPolicy; vp != nil {
		set := 0
		if vp.Latest != 0 {
			set++
		}
		if vp.All {
			set++
		}
		if len(vp.Specific) > 0 {
			set++
		}
		if set != 1 {
			bad("version_policy", "set exactly one of latest, all, specific")
		}
		if vp.Latest < 0 {
			bad("version_policy.latest", "%d must be >= 1", vp.Latest)
		}
		for j, v := range vp.Specific {
			if v < 1 {
				bad(fmt.Sprintf("version_policy.specific[%d]", j), "%d must be >= 1", v)
			}
		}
	}
	if s.Preprocessing != nil {
		s.Preprocessing.validate(s, bad)
	}
	if c := s.Execution.CUDA; c.DeviceID < 0 {
		bad("execution.cuda.device_id", "%d must be >= 0", c.DeviceID)
	}
	if a := s.Execution.CUDA.CudnnConvAlgoSearch; a != "" && a != "EXHAUSTIVE" && a != "HEURISTIC" && a != "DEFAULT" {
		bad("execution.cuda.cudnn_conv_algo_search", "%q must be EXHAUSTIVE, HEURISTIC or DEFAULT", a)
	}
	if a := s.Execution.CUDA.ArenaExtendStrategy; a != "" && a != "kNextPowerOfTwo" && a != "kSameAsRequested" {
		bad("execution.cuda.arena_extend_strategy", "%q must be kNextPowerOfTwo or kSameAsRequested", a)
	}
	if s.Execution.CUDA.GPUMemLimit < 0 {
		bad("execution.cuda.gpu_mem_limit", "%d must be >= 0", s.Execution.CUDA.GPUMemLimit)
	}
	for i, p := range s.Execution.Providers {
		if !oneOf(p, providers) {
			bad(fmt.Sprintf("execution.providers[%d]", i), "%q must be one of %s", p, strings.Join(providers, ", "))
		}
	}
	if s.Execution.IntraOpThreads < 0 || s.Execution.IntraOpThreads > 1024 {
		bad("execution.intra_op_threads", "%d must be between 0 and 1024", s.Execution.IntraOpThreads)
	}
	if s.Execution.InterOpThreads < 0 || s.Execution.InterOpThreads > 1024 {
		bad("execution.inter_op_threads", "%d must be between 0 and 1024", s.Execution.InterOpThreads)
	}
	if !oneOf(s.Execution.IOBinding, []string{"auto", "on", "off"}) {
		bad("execution.io_binding", "%q must be auto, on or off", s.Execution.IOBinding)
	} else if s.Execution.IOBinding == "on" {
		if where := DynamicDims(s); where != "" {
			bad("execution.io_binding", "on needs fixed dims, and %s has a dynamic one", where)
		}
	}
	s.validateWarmup(bad)
	if !oneOf(s.Execution.GraphOptimization, optimization) {
		bad("execution.graph_optimization", "%q must be one of %s", s.Execution.GraphOptimization, strings.Join(optimization, ", "))
	}
	return errors.Join(errs...)
}

func oneOf(s string, set []string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// Bundle is a parsed bundle folder: its spec and the versions on disk.
type Bundle struct {
	Dir      string
	Spec     *Spec
	Versions []int64 // ascending
}

// ModelPath is where a version's ONNX file lives.
func (b *Bundle) ModelPath(version int64) string {
	return filepath.Join(b.Dir, strconv.FormatInt(version, 10), ModelFile)
}

// Read parses the bundle in dir and lists its version folders.
func Read(dir string) (*Bundle, error) {
	file := filepath.Join(dir, FileName)
	st, err := os.Stat(file)
	if err != nil {
		return nil, &FieldError{File: file, Msg: "cannot read: " + err.Error()}
	}
	if st.Size() > MaxFileSize {
		return nil, &FieldError{File: file, Msg: fmt.Sprintf("file is %d bytes, more than the %d allowed", st.Size(), MaxFileSize)}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, &FieldError{File: file, Msg: err.Error()}
	}
	spec, err := Parse(file, data)
	if err != nil {
		return nil, err
	}
	if base := filepath.Base(filepath.Clean(dir)); spec.Name != base {
		return nil, &FieldError{File: file, Field: "name", Msg: fmt.Sprintf("%q must match the folder name %q", spec.Name, base)}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, &FieldError{File: dir, Msg: err.Error()}
	}
	b := &Bundle{Dir: dir, Spec: spec}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		v, err := strconv.ParseInt(e.Name(), 10, 64)
		if err != nil || v < 1 {
			continue // Triton ignores non-numeric folders too
		}
		if _, err := os.Stat(b.ModelPath(v)); err != nil {
			return nil, &FieldError{File: b.ModelPath(v), Msg: "version folder has no " + ModelFile}
		}
		b.Versions = append(b.Versions, v)
	}
	sort.Slice(b.Versions, func(i, j int) bool { return b.Versions[i] < b.Versions[j] })
	if len(b.Versions) == 0 {
		return nil, &FieldError{File: dir, Msg: "no version folders (<version>/" + ModelFile + ")"}
	}
	return b, nil
}

// Select returns the versions the version policy loads at start.
func (b *Bundle) Select() []int64 {
	vp := b.Spec.VersionPolicy
	switch {
	case vp.All:
		return append([]int64(nil), b.Versions...)
	case len(vp.Specific) > 0:
		var out []int64
		for _, v := range vp.Specific {
			if b.Has(v) {
				out = append(out, v)
			}
		}
		return out
	default:
		n := vp.Latest
		if n > len(b.Versions) {
			n = len(b.Versions)
		}
		return append([]int64(nil), b.Versions[len(b.Versions)-n:]...)
	}
}

// Has reports whether version v is on disk.
func (b *Bundle) Has(v int64) bool {
	for _, x := range b.Versions {
		if x == v {
			return true
		}
	}
	return false
}

// ListRepository returns the model folders in a repository (folders that
// hold a bundle.yaml), sorted by name.
func ListRepository(repo string) ([]string, error) {
	entries, err := os.ReadDir(repo)
	if err != nil {
		return nil, fmt.Errorf("model repository: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			if _, err := os.Stat(filepath.Join(repo, e.Name(), FileName)); err == nil {
				names = append(names, e.Name())
			}
		}
	}
	return names, nil
}

// DynamicDims names the first input or output with a dynamic (-1) dim,
// or returns "" when every dim is fixed.
func DynamicDims(s *Spec) string {
	for i, in := range s.Inputs {
		for _, d := range in.Dims {
			if d < 0 {
				return fmt.Sprintf("inputs[%d].dims", i)
			}
		}
	}
	for i, out := range s.Outputs {
		for _, d := range out.Dims {
			if d < 0 {
				return fmt.Sprintf("outputs[%d].dims", i)
			}
		}
	}
	return ""
}
