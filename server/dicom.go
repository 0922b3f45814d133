package server

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/dicom"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// MaxInstances caps the DICOM instances one request may carry.
const MaxInstances = 20000

// studyVolume reads a request's DICOM instances and returns the series the
// model should run on, with warnings for what was skipped or flagged.
func studyVolume(spec *bundle.Spec, in *pb.DicomInput, opts dicom.Options) (*dicom.Series, []string, error) {
	raw := in.GetInstances()
	if len(raw) == 0 {
		return nil, nil, invalid("dicom.instances: empty")
	}
	if len(raw) > MaxInstances {
		return nil, nil, status.Errorf(codes.ResourceExhausted, "dicom.instances: %d instances, at most %d", len(raw), MaxInstances)
	}
	inputs := make([]dicom.Input, len(raw))
	for i, b := range raw {
		inputs[i] = dicom.Input{Source: fmt.Sprintf("instances[%d]", i), Data: b}
	}
	all, skipped, err := dicom.ReadStudy(inputs, opts)
	if err != nil {
		var de *dicom.Error
		if errors.As(err, &de) && de.Unsupported {
			return nil, nil, status.Error(codes.Unimplemented, err.Error())
		}
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var warnings []string
	for _, s := range skipped {
		warnings = append(warnings, fmt.Sprintf("skipped %s: %s", s.Source, s.Reason))
	}
	if len(all) == 0 {
		return nil, warnings, invalid("dicom.instances: no image series among %d instances (%s)", len(raw), strings.Join(warnings, "; "))
	}
	// Several series: keep those the bundle accepts; one must remain.
	candidates := all
	if len(all) > 1 {
		candidates = nil
		for _, s := range all {
			if checkAccepts(spec, s.Modality, s.BodyPart) == nil {
				candidates = append(candidates, s)
			}
		}
		if len(candidates) != 1 {
			var list []string
			for _, s := range all {
				list = append(list, fmt.Sprintf("%s (%s, %d slices)", s.SeriesInstanceUID, s.Modality, len(s.Slices)))
			}
			dicom.ReleaseAll(all)
			return nil, warnings, invalid("dicom.instances: %d image series (%s) and %d that model %q accepts; send one series",
				len(all), strings.Join(list, ", "), len(candidates), spec.Name)
		}
	}
	s := candidates[0]
	for _, o := range all {
		if o != s {
			o.Release()
		}
	}
	for _, p := range s.Problems {
		warnings = append(warnings, fmt.Sprintf("series %s: %s", s.SeriesInstanceUID, p))
	}
	return s, warnings, nil
}
