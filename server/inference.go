package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/postprocess"
	"github.com/voxserve/voxserve/preprocess"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/pseudo"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// inference implements voxserve.v1.Inference over an engine registry.
type inference struct {
	pb.UnimplementedInferenceServer
	reg *engine.Registry
	// maxStreamBytes caps the DICOM bytes one InferStream may send in total.
	maxStreamBytes int64
	dicomOpts      dicom.Options
	acc            preprocess.Accelerator // nil: preprocessing on the CPU
	prep           *prometheus.HistogramVec
	uids           dicomout.UIDs // for SR and SEG objects
	pseudo         *pseudo.Key   // pseudonymizes SR and SEG objects; nil: off
}

func (s *inference) Infer(ctx context.Context, req *pb.InferRequest) (*pb.InferResponse, error) {
	start := time.Now()
	if req.GetModel() == "" {
		return nil, invalid("model: required")
	}
	want, err := wantedOutputs(req.GetOutputs())
	if err != nil {
		return nil, err
	}
	m, release, err := s.reg.Acquire(req.GetModel(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := checkDerived(m.Spec, req); err != nil {
		return nil, err
	}

	prepStart := time.Now()
	var stages []*pb.Stage // Timings.stages
	stage := func(name string, d time.Duration) {
		stages = append(stages, &pb.Stage{Name: name, Us: d.Microseconds()})
	}
	var inputs []*tensor.Tensor
	resp := &pb.InferResponse{Model: m.Spec.Name, Version: m.VersionString(), RequestId: req.GetRequestId()}
	var geometry *pb.Geometry
	var plan *preprocess.Prepared // set when the bundle declares preprocessing
	var study *postprocess.Study  // set for volume and DICOM inputs
	var series *dicom.Series      // set for DICOM input
	switch in := req.GetInput().(type) {
	case *pb.InferRequest_Tensors:
		if inputs, err = tensorsFromProto(in.Tensors.GetTensors()); err != nil {
			return nil, err
		}
	case *pb.InferRequest_Volume, *pb.InferRequest_Dicom:
		var vol *volume.Volume
		if v, ok := in.(*pb.InferRequest_Volume); ok {
			if vol, err = volumeFromProto(v.Volume); err != nil {
				return nil, err
			}
		} else {
			var warnings []string
			series, warnings, err = studyVolume(m.Spec, in.(*pb.InferRequest_Dicom).Dicom, s.studyOptions(m.Spec))
			if err != nil {
				return nil, err
			}
			stage("dicom", time.Since(prepStart))
			// The volume may be page-locked memory lent for the request
			// (studyOptions); nothing in the response points into it.
			defer series.Release()
			// The series holds what the rest needs: let the collector have
			// the instances' bytes (the size of the study) now, not when
			// the request ends.
			in.(*pb.InferRequest_Dicom).Dicom.Instances = nil
			resp.Warnings = append(resp.Warnings, warnings...)
			resp.StudyInstanceUid, resp.SeriesInstanceUid = series.StudyInstanceUID, series.SeriesInstanceUID
			vol = series.Volume
		}
		if err := checkAccepts(m.Spec, vol.Modality, vol.BodyPart); err != nil {
			return nil, err
		}
		if vol.Modality == "" && len(m.Spec.Modalities) > 0 {
			resp.Warnings = append(resp.Warnings, "the study has no modality; the model's modality check was skipped")
		}
		prepare := time.Now()
		if m.Spec.Preprocessing != nil {
			if plan, err = s.prepare(vol, m.Spec.PreprocessSpec(), m); err != nil {
				return nil, invalid("preprocessing the study: %v", err)
			}
			defer plan.Release() // after the model has read a resident input
			inputs = []*tensor.Tensor{plan.Input}
			resp.Warnings = append(resp.Warnings, plan.Warnings...)
		} else {
			t, err := volumeInput(m.Spec, vol)
			if err != nil {
				return nil, err
			}
			inputs = []*tensor.Tensor{t}
		}
		stage("prepare", time.Since(prepare))
		geometry = geometryToProto(vol.Geometry)
		study = &postprocess.Study{Geometry: vol.Geometry, Modality: vol.Modality}
		if rs := vol.Rescale; rs != nil {
			// int16 stored values (studyOptions): postprocessing reads
			// them through the rescale, with no float32 copy.
			study.Stored, _ = vol.Int16()
			study.Slope, study.Intercept = rs.Slope, rs.Intercept
		} else if study.Values, _, err = vol.Values(); err != nil {
			return nil, invalid("volume: %v", err)
		}
	default:
		return nil, invalid("input: one of tensors, volume or dicom is required")
	}
	prepTime := time.Since(prepStart)
	if s.prep != nil && plan != nil {
		s.prep.WithLabelValues(m.Spec.Name, m.VersionString()).Observe(prepTime.Seconds())
	}

	// The SR reports the measurements, which are taken on the masks.
	needMasks := want[pb.OutputKind_OUTPUT_KIND_MASK] || want[pb.OutputKind_OUTPUT_KIND_MEASUREMENTS] ||
		want[pb.OutputKind_OUTPUT_KIND_DICOM_SEG] || (want[pb.OutputKind_OUTPUT_KIND_DICOM_SR] && hasMeasurements(m.Spec))
	fractional := func(decl bundle.Output) bool {
		return want[pb.OutputKind_OUTPUT_KIND_DICOM_SEG] && decl.SEGType == "fractional"
	}
	var into []*tensor.DeviceBytes
	if plan != nil && needMasks && !want[pb.OutputKind_OUTPUT_KIND_TENSORS] {
		var release func()
		into, release, err = s.residentOutputs(m, plan, fractional)
		if err != nil {
			resp.Warnings = append(resp.Warnings, err.Error())
		}
		defer release() // after the labels are read
	}
	// STAT (1) and ROUTINE (2) are the scheduler's priority levels;
	// unspecified (0) takes the bundle's default.
	outs, tm, err := m.InferAllTo(engine.WithPriority(ctx, int(req.GetPriority())), inputs, into)
	if err != nil {
		return nil, err
	}
	stage("batch_input", tm.Input)
	stage("model", tm.Infer)
	stage("batch_output", tm.Output)
	post := time.Now() // postprocessing includes mapping outputs back to the study
	var premade map[int]*postprocess.Mask
	fractions := map[string][][]uint8{} // fractional SEG content by output
	if plan != nil && needMasks {
		// Per-voxel outputs go back onto the study's own grid (measurements
		// are taken there too), labelled there directly: on the GPU when
		// there is one, else by postprocess.CPULabels, which skips
		// background rows. Outputs that must exist mapped in full (raw
		// tensors asked for, a fractional SEG's probabilities) are mapped
		// here and labelled by postprocess.
		la, _ := s.acc.(preprocess.LabelAccelerator)
		if la == nil && !want[pb.OutputKind_OUTPUT_KIND_TENSORS] {
			la = postprocess.CPULabels{}
		}
		for i, decl := range m.Spec.Outputs {
			if decl.Kind != "mask" {
				continue
			}
			if outs[i].Device != nil { // where the model wrote it (residentOutputs)
				rla := s.acc.(preprocess.ResidentLabelAccelerator)
				mk, err := sourceLabelsResident(rla, plan, outs[i], decl, study)
				if err == nil {
					if premade == nil {
						premade = map[int]*postprocess.Mask{}
					}
					premade[i] = mk
					continue
				}
				resp.Warnings = append(resp.Warnings, fmt.Sprintf("labelling %s where the model wrote it on %s failed (%v); ran through the host", decl.Name, rla.Name(), err))
				data := make([]byte, outs[i].Device.Len)
				if err := rla.ReadResident(data, *outs[i].Device); err != nil {
					return nil, status.Errorf(codes.Internal, "reading %s from %s: %v", decl.Name, rla.Name(), err)
				}
				outs[i] = &tensor.Tensor{Name: outs[i].Name, DType: outs[i].DType, Shape: outs[i].Shape, Data: data}
			}
			if la != nil && !fractional(decl) {
				if mk, err := sourceLabels(la, plan, outs[i], decl, study); err == nil {
					if premade == nil {
						premade = map[int]*postprocess.Mask{}
					}
					premade[i] = mk
					continue
				} else {
					resp.Warnings = append(resp.Warnings, fmt.Sprintf("labelling %s on %s failed (%v); ran on the CPU", decl.Name, la.Name(), err))
				}
			}
			if outs[i], err = plan.ToSource(outs[i]); err != nil {
				return nil, status.Errorf(codes.Internal, "mapping %s back to the study: %v", decl.Name, err)
			}
		}
	}
	for i, decl := range m.Spec.Outputs {
		if decl.Kind == "mask" && fractional(decl) {
			if fractions[decl.Name], err = postprocess.Fractions(decl, outs[i]); err != nil {
				return nil, status.Errorf(codes.Internal, "fractional SEG of %s: %v", decl.Name, err)
			}
		}
	}
	if plan != nil && needMasks {
		stage("labels", time.Since(post))
	}

	measured := time.Now()
	res, err := postprocess.RunWith(m.Spec, outs, needMasks, study, premade)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "postprocessing %s: %v", m, err)
	}
	resp.Warnings = append(resp.Warnings, res.Warnings...)
	triage, reasons := postprocess.Triage(m.Spec, res)
	resp.Triage, resp.TriageReasons = triageToProto(triage), reasons
	stage("measurements", time.Since(measured))
	if want[pb.OutputKind_OUTPUT_KIND_DICOM_SR] || want[pb.OutputKind_OUTPUT_KIND_DICOM_SEG] {
		derived := time.Now()
		if resp.DicomSr, resp.DicomSeg, err = s.derived(m, series, res, fractions, triage, want, req.GetSegOmitEmptyFrames()); err != nil {
			return nil, err
		}
		stage("dicom_outputs", time.Since(derived))
	}
	if want[pb.OutputKind_OUTPUT_KIND_MEASUREMENTS] {
		for _, x := range res.Measurements {
			resp.Measurements = append(resp.Measurements, &pb.Measurement{Name: x.Name, Value: x.Value, Unit: x.Unit, Label: x.Label})
		}
	}
	if !want[pb.OutputKind_OUTPUT_KIND_MASK] {
		res.Masks = nil
	}
	if want[pb.OutputKind_OUTPUT_KIND_FINDINGS] {
		for _, f := range res.Findings {
			resp.Findings = append(resp.Findings, findingToProto(f))
		}
	}
	if len(res.Masks) > 0 {
		compress := time.Now()
		for i := range res.Masks {
			resp.Masks = append(resp.Masks, maskToProto(&res.Masks[i], geometry))
		}
		stage("masks", time.Since(compress))
	}
	if want[pb.OutputKind_OUTPUT_KIND_TENSORS] {
		for _, o := range outs {
			resp.Tensors = append(resp.Tensors, tensorToProto(o))
		}
	}
	resp.Timings = &pb.Timings{
		QueueUs:       tm.Queue.Microseconds(),
		PreprocessUs:  prepTime.Microseconds(),
		InferenceUs:   tm.Compute.Microseconds(),
		PostprocessUs: time.Since(post).Microseconds(),
		TotalUs:       time.Since(start).Microseconds(),
		Stages:        stages,
	}
	return resp, nil
}

// wantedOutputs resolves the requested output kinds; empty means findings,
// masks and measurements.
func wantedOutputs(kinds []pb.OutputKind) (map[pb.OutputKind]bool, error) {
	want := map[pb.OutputKind]bool{}
	if len(kinds) == 0 {
		kinds = []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MASK, pb.OutputKind_OUTPUT_KIND_MEASUREMENTS}
	}
	for i, k := range kinds {
		switch k {
		case pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MASK,
			pb.OutputKind_OUTPUT_KIND_MEASUREMENTS, pb.OutputKind_OUTPUT_KIND_TENSORS,
			pb.OutputKind_OUTPUT_KIND_DICOM_SR, pb.OutputKind_OUTPUT_KIND_DICOM_SEG:
			want[k] = true
		default:
			return nil, invalid("outputs[%d]: %v is not an output kind", i, k)
		}
	}
	return want, nil
}

func findingToProto(f postprocess.Finding) *pb.Finding {
	return &pb.Finding{Label: f.Label, Code: codeToProto(f.Code), Probability: f.Probability,
		Threshold: f.Threshold, Present: f.Present, Output: f.Output}
}

func codeToProto(c *bundle.Code) *pb.Code {
	if c == nil {
		return nil
	}
	return &pb.Code{Scheme: c.Scheme, Value: c.Value, Meaning: c.Meaning}
}

func maskToProto(m *postprocess.Mask, g *pb.Geometry) *pb.Mask {
	return &pb.Mask{Output: m.Output, Labels: m.Labels, Dims: m.Dims, Geometry: g, DataZlib: m.Compressed()}
}

// InferStream gathers a header and DICOM instances, then answers once.
func (s *inference) InferStream(stream pb.Inference_InferStreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	header := first.GetHeader()
	if header == nil {
		return invalid("first message: must carry the header (model, priority, outputs)")
	}
	if header.GetInput() != nil {
		return invalid("header: must not carry input; send instances in the following messages")
	}
	var total int64
	var instances [][]byte
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		part := msg.GetInstances()
		if part == nil {
			return invalid("message %d: after the header only instances may follow", len(instances)+1)
		}
		for _, inst := range part.GetInstances() {
			total += int64(len(inst))
			if total > s.maxStreamBytes {
				return status.Errorf(codes.ResourceExhausted, "stream carries more than %d bytes of instances", s.maxStreamBytes)
			}
			instances = append(instances, inst)
		}
	}
	if len(instances) == 0 {
		return invalid("no instances after the header")
	}
	header.Input = &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: instances}}
	resp, err := s.Infer(stream.Context(), header)
	if err != nil {
		return err
	}
	return stream.SendAndClose(resp)
}

func (s *inference) ListModels(ctx context.Context, _ *pb.ListModelsRequest) (*pb.ListModelsResponse, error) {
	resp := &pb.ListModelsResponse{}
	for _, m := range s.reg.Models() {
		resp.Models = append(resp.Models, modelInfo(m, nil, s.acc))
	}
	return resp, nil
}

func (s *inference) GetModel(ctx context.Context, req *pb.GetModelRequest) (*pb.ModelInfo, error) {
	if req.GetName() == "" {
		return nil, invalid("name: required")
	}
	m, release, err := s.reg.Acquire(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	defer release()
	var avail []int64
	if b, err := bundle.Read(m.BundleDir()); err == nil {
		avail = b.Versions
	}
	return modelInfo(m, avail, s.acc), nil
}

func (s *inference) LoadModel(ctx context.Context, req *pb.LoadModelRequest) (*pb.LoadModelResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name: required")
	}
	var versions []int64
	for i, v := range req.GetVersions() {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return nil, invalid("versions[%d]: %q is not a version number", i, v)
		}
		versions = append(versions, n)
	}
	loaded, err := s.reg.Load(req.GetName(), versions)
	if err != nil {
		return nil, err
	}
	resp := &pb.LoadModelResponse{}
	for _, m := range loaded {
		resp.Loaded = append(resp.Loaded, modelInfo(m, nil, s.acc))
	}
	return resp, nil
}

func (s *inference) UnloadModel(ctx context.Context, req *pb.UnloadModelRequest) (*pb.UnloadModelResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name: required")
	}
	var v int64
	if req.GetVersion() != "" {
		n, err := strconv.ParseInt(req.GetVersion(), 10, 64)
		if err != nil || n < 1 {
			return nil, invalid("version: %q is not a version number", req.GetVersion())
		}
		v = n
	}
	gone, err := s.reg.Unload(req.GetName(), v)
	if err != nil {
		return nil, err
	}
	resp := &pb.UnloadModelResponse{}
	for _, g := range gone {
		resp.UnloadedVersions = append(resp.UnloadedVersions, strconv.FormatInt(g, 10))
	}
	return resp, nil
}

// sourceLabels labels a mask output on the study's grid through la.
// prepare runs the bundle's preprocessing. When the accelerator can leave
// the model input in the memory the model's inputs are bound in (a GPU
// with device-bound I/O), it does: the study goes to the device once and
// the model reads its input where the kernels wrote it. Otherwise, or if
// that fails, PrepareWith.
func (s *inference) prepare(vol *volume.Volume, spec preprocess.Spec, m *engine.Model) (*preprocess.Prepared, error) {
	var warning string
	if ra, ok := s.acc.(preprocess.ResidentAccelerator); ok {
		kind, dev := m.IOMemory()
		if rk, rd := ra.ResidentMemory(); kind != "" && kind == rk && dev == rd {
			p, ok, err := preprocess.PrepareResident(vol, spec, m.Spec.Inputs[0].Name, ra)
			if ok {
				return p, nil
			}
			if err != nil {
				warning = fmt.Sprintf("preprocessing into the model's memory on %s failed (%v); ran through the host", ra.Name(), err)
			}
		}
	}
	p, err := preprocess.PrepareWith(vol, spec, m.Spec.Inputs[0].Name, s.acc)
	if err == nil && warning != "" {
		p.Warnings = append([]string{warning}, p.Warnings...)
	}
	return p, err
}

// studyOptions are the DICOM options for a request to spec. When the
// bundle's preprocessing windows the study:
//   - on the accelerator: volumes are decoded straight into its page-locked
//     memory, as int16 stored values where the series allows (half the
//     bytes; the fused kernel rescales them), so that the volume goes to
//     the device in one asynchronous copy at full speed;
//   - on the CPU, when it also resamples: volumes stay int16 in Go memory,
//     and resampling converts only the rows it reads (half the memory, and
//     no float32 pass over the whole study).
func (s *inference) studyOptions(spec *bundle.Spec) dicom.Options {
	opts := s.dicomOpts
	if spec.Preprocessing == nil {
		return opts
	}
	pp := spec.PreprocessSpec()
	if !pp.Accelerates() {
		return opts
	}
	if hv, ok := s.acc.(preprocess.HostMemory); ok {
		opts.Voxels = hv.HostFloat32s
		if _, i16 := s.acc.(preprocess.AcceleratorI16); i16 {
			opts.Stored = hv.HostInt16s
		}
	} else if s.acc == nil && pp.TargetSpacing != ([3]float64{}) {
		opts.Stored = func(n int) ([]int16, func()) { return make([]int16, n), func() {} }
	}
	return opts
}

func sourceLabels(la preprocess.LabelAccelerator, plan *preprocess.Prepared, out *tensor.Tensor, decl bundle.Output, study *postprocess.Study) (*postprocess.Mask, error) {
	ch, err := plan.ModelChannels(out)
	if err != nil {
		return nil, err
	}
	return labelMask(plan, decl, study, ch.C, func(th []float64, minVoxels int) ([]uint8, error) {
		return la.SourceLabels(ch, plan.Model, plan.Source, plan.SourceSize, decl.Activation, th, minVoxels)
	})
}

// sourceLabelsResident is sourceLabels for a mask output the model left in
// the accelerator's memory (residentOutputs): labelled where it is.
func sourceLabelsResident(la preprocess.ResidentLabelAccelerator, plan *preprocess.Prepared, out *tensor.Tensor, decl bundle.Output, study *postprocess.Study) (*postprocess.Mask, error) {
	rc, err := plan.ResidentChannels(out)
	if err != nil {
		return nil, err
	}
	return labelMask(plan, decl, study, rc.C, func(th []float64, minVoxels int) ([]uint8, error) {
		return la.SourceLabelsResident(rc, plan.Model, plan.Source, plan.SourceSize, decl.Activation, th, minVoxels)
	})
}

// labelMask makes the mask of output decl, of c channels, on the study's
// grid with label, given the labels' thresholds and the speck size.
func labelMask(plan *preprocess.Prepared, decl bundle.Output, study *postprocess.Study, c int,
	label func(thresholds []float64, minVoxels int) ([]uint8, error)) (*postprocess.Mask, error) {
	if c != len(decl.Labels) {
		return nil, fmt.Errorf("%d channels for %d labels", c, len(decl.Labels))
	}
	th := make([]float64, len(decl.Labels))
	mk := &postprocess.Mask{Output: decl.Name}
	for i, l := range decl.Labels {
		th[i] = l.Threshold
		mk.Labels = append(mk.Labels, l.Name)
	}
	var err error
	if mk.Voxels, err = label(th, postprocess.MinVoxels(decl, study)); err != nil {
		return nil, err
	}
	size := plan.SourceSize
	mk.Dims = []int64{int64(size[2]), int64(size[1]), int64(size[0])}
	return mk, nil
}

// residentOutputs lends the model memory for the mask outputs the
// accelerator can label where the model writes them: when it is a GPU
// with device-bound outputs on the same device, for masks not wanted as
// fractional SEGs (patch predictions are stitched there too). The model's output then goes from the model to the label map
// without passing through the host. into is InferAllTo's, nil where an
// output goes to the host; release gives the memory back. An error is a
// warning: the outputs it names go through the host.
func (s *inference) residentOutputs(m *engine.Model, plan *preprocess.Prepared, fractional func(bundle.Output) bool) (into []*tensor.DeviceBytes, release func(), err error) {
	var lent []func()
	release = func() {
		for _, f := range lent {
			f()
		}
	}
	rla, ok := s.acc.(preprocess.ResidentLabelAccelerator)
	if !ok {
		return nil, release, nil
	}
	kind, dev := m.IOMemory()
	if rk, rd := rla.ResidentMemory(); kind == "" || kind != rk || dev != rd {
		return nil, release, nil
	}
	items := int64(1)
	if m.Spec.MaxBatchSize > 0 {
		items = plan.Input.Shape[0]
	}
	for i, decl := range m.Spec.Outputs {
		if decl.Kind != "mask" || fractional(decl) || decl.DataType != string(tensor.Float32) {
			continue
		}
		n, err := m.OutputBytes(i, items)
		if err != nil {
			return into, release, fmt.Errorf("output %s goes through the host: %v", decl.Name, err)
		}
		buf, err := rla.ResidentBuffer(n)
		if err != nil {
			return into, release, fmt.Errorf("output %s goes through the host: no memory on %s for it (%v)", decl.Name, rla.Name(), err)
		}
		lent = append(lent, buf.Release)
		if into == nil {
			into = make([]*tensor.DeviceBytes, len(m.Spec.Outputs))
		}
		into[i] = &buf.DeviceBytes
	}
	return into, release, nil
}
