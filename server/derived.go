package server

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/postprocess"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// checkDerived refuses DICOM outputs a request cannot have, before any work.
func checkDerived(spec *bundle.Spec, req *pb.InferRequest) error {
	_, isDicom := req.GetInput().(*pb.InferRequest_Dicom)
	for i, k := range req.GetOutputs() {
		if k != pb.OutputKind_OUTPUT_KIND_DICOM_SR && k != pb.OutputKind_OUTPUT_KIND_DICOM_SEG {
			continue
		}
		if !isDicom && req.GetInput() != nil {
			return invalid("outputs[%d]: %v needs DICOM input (dicom instances or InferStream): the object references the source instances", i, k)
		}
		if k == pb.OutputKind_OUTPUT_KIND_DICOM_SEG && !hasKind(spec, "mask") {
			return invalid("outputs[%d]: %v: model %q has no mask output (task %s), so there is nothing to segment", i, k, spec.Name, spec.Task)
		}
		if k == pb.OutputKind_OUTPUT_KIND_DICOM_SR && !hasKind(spec, "mask") && !hasKind(spec, "scores") {
			return invalid("outputs[%d]: %v: model %q has no scores or mask output, so there is nothing to report", i, k, spec.Name)
		}
	}
	return nil
}

func hasKind(spec *bundle.Spec, kind string) bool {
	for _, o := range spec.Outputs {
		if o.Kind == kind {
			return true
		}
	}
	return false
}

func hasMeasurements(spec *bundle.Spec) bool {
	for _, o := range spec.Outputs {
		if len(o.Measurements) > 0 {
			return true
		}
	}
	return false
}

// Fractions are quantized to the SEG's maximum fractional value: a
// compile-time check that the two agree.
var _ = [1]struct{}{}[postprocess.MaxFraction-dicomout.MaxFractionalValue]

// anatomicalStructure is the SEG category a mask label gets by default.
var anatomicalStructure = dicomout.Code{Value: "91723000", Scheme: "SCT", Meaning: "Anatomical Structure"}

func codeOf(c *bundle.Code) *dicomout.Code {
	if c == nil {
		return nil
	}
	return &dicomout.Code{Value: c.Value, Scheme: c.Scheme, Meaning: c.Meaning}
}

// labelCodes maps each mask label to its bundle label (code and category).
func labelCodes(spec *bundle.Spec) map[string]bundle.Label {
	out := map[string]bundle.Label{}
	for _, o := range spec.Outputs {
		if o.Kind == "mask" {
			for _, l := range o.Labels {
				out[l.Name] = l
			}
		}
	}
	return out
}

// derived encodes the SR and SEG a request asked for from its result;
// fractions holds the probabilities of outputs whose SEG is fractional.
func (s *inference) derived(m *engine.Model, series *dicom.Series, res *postprocess.Result, fractions map[string][][]uint8,
	triage string, want map[pb.OutputKind]bool, omitEmpty bool) (sr, seg []byte, err error) {
	src := dicomout.SourceFromSeries(series)
	if s.pseudo != nil {
		src = s.pseudo.Source(src)
	}
	alg := dicomout.Algorithm{Name: m.Spec.Name, Version: m.VersionString(), Software: Version,
		DeviceUID: s.uids.Device(m.Spec.Name, m.VersionString())}
	opt := dicomout.Options{UIDs: s.uids, OmitEmptyFrames: omitEmpty}
	labels := labelCodes(m.Spec)
	fail := func(what string, err error) error {
		var me *dicomout.MissingError
		if errors.As(err, &me) {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		return status.Errorf(codes.Internal, "writing the %s: %v", what, err)
	}

	var segInfo *dicomout.SegInfo
	if want[pb.OutputKind_OUTPUT_KIND_DICOM_SEG] {
		var maps []dicomout.LabelMap
		n := src.Dims[0] * src.Dims[1] * src.Dims[2]
		for _, mk := range res.Masks {
			if len(mk.Voxels) != n {
				return nil, nil, status.Errorf(codes.Internal, "mask %s has %d voxels, the source grid %v has %d", mk.Output, len(mk.Voxels), src.Dims, n)
			}
			lm := dicomout.LabelMap{Voxels: mk.Voxels, Fractions: fractions[mk.Output]}
			for _, name := range mk.Labels {
				l := labels[name]
				sg := dicomout.Segment{Label: name, Category: anatomicalStructure, Type: dicomout.LocalCode(name), Omit: l.Background}
				if c := codeOf(l.Category); c != nil {
					sg.Category = *c
				}
				if c := codeOf(l.Code); c != nil {
					sg.Type = *c
				}
				lm.Segments = append(lm.Segments, sg)
			}
			maps = append(maps, lm)
		}
		if segInfo, err = dicomout.SEG(src, maps, alg, opt); err != nil {
			return nil, nil, fail("SEG", err)
		}
		seg = segInfo.Bytes
	}
	if want[pb.OutputKind_OUTPUT_KIND_DICOM_SR] {
		rep := dicomout.Report{Triage: triage}
		for _, f := range res.Findings {
			rep.Findings = append(rep.Findings, dicomout.Finding{Label: f.Label, Code: codeOf(f.Code),
				Probability: f.Probability, Threshold: f.Threshold, Present: f.Present})
		}
		for _, x := range res.Measurements {
			rep.Measurements = append(rep.Measurements, dicomout.Measurement{Label: x.Label, LabelCode: codeOf(labels[x.Label].Code),
				Name: x.Name, Kind: x.Type, Value: x.Value, Unit: x.Unit})
		}
		obj, err := dicomout.SR(src, rep, segInfo, alg, opt)
		if err != nil {
			return nil, nil, fail("SR", err)
		}
		sr = obj.Bytes
	}
	return sr, seg, nil
}

func triageToProto(t string) pb.Triage {
	switch t {
	case postprocess.TriageUrgent:
		return pb.Triage_TRIAGE_URGENT
	case postprocess.TriageRoutine:
		return pb.Triage_TRIAGE_ROUTINE
	}
	return pb.Triage_TRIAGE_UNSPECIFIED
}
