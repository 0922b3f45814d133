package server

import (
	"bytes"
	"compress/zlib"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sd "github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/internal/dicomcheck"
	"github.com/voxserve/voxserve/internal/testrepo"
	ph "github.com/voxserve/voxserve/phantom"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/pseudo"
	"github.com/voxserve/voxserve/tensor"
)

var derivedOutputs = []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MASK,
	pb.OutputKind_OUTPUT_KIND_MEASUREMENTS, pb.OutputKind_OUTPUT_KIND_DICOM_SR, pb.OutputKind_OUTPUT_KIND_DICOM_SEG}

// TestReferenceBundlesDICOMOutputs runs each reference bundle on a phantom
// study through a real server and validates the SR and SEG it returns with
// dciodvfy and highdicom: the SEG must hold exactly the mask of the
// response, in place on the source geometry, and the SR every finding and
// measurement of the response with its unit. The masks are also compared
// with the phantom's ground truth (Dice).
func TestReferenceBundlesDICOMOutputs(t *testing.T) {
	h := start(t, "../models", Options{UIDRoot: "1.2.826.0.1.3680043.10.999"})
	for _, tc := range []struct {
		model   string
		kind    ph.Kind
		opts    ph.Options
		minDice float64
		triage  string
	}{
		{"ich", ph.HeadCT, ph.Options{Seed: 300001, Matrix: 128, SliceThickness: 5}, 0.3, "urgent"},
		{"pneumothorax", ph.ChestXR, ph.Options{Seed: 300002}, 0.8, "urgent"},
		{"psoas", ph.AbdomenCT, ph.Options{Seed: 300000, Matrix: 128, SliceThickness: 5}, 0.8, ""},
	} {
		t.Run(tc.model, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join("../models", tc.model, "1", "model.onnx")); err != nil {
				t.Skip("models/" + tc.model + " not trained")
			}
			pos := true
			tc.opts.Positive = &pos
			c, err := ph.Generate(tc.kind, tc.opts)
			require.NoError(t, err)
			dir := t.TempDir()
			files, err := c.Series.Encode()
			require.NoError(t, err)
			var paths []string
			for k, b := range files {
				paths = append(paths, filepath.Join(dir, fmt.Sprintf("IM%04d.dcm", k)))
				require.NoError(t, os.WriteFile(paths[k], b, 0o644))
			}
			resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: tc.model, Outputs: derivedOutputs,
				Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}})
			require.NoError(t, err)
			require.NotEmpty(t, resp.GetDicomSr())
			require.NotEmpty(t, resp.GetDicomSeg())
			require.Len(t, resp.GetMasks(), 1)
			assert.Equal(t, c.Truth.StudyUID, resp.GetStudyInstanceUid())
			assert.Equal(t, tc.triage, map[pb.Triage]string{pb.Triage_TRIAGE_URGENT: "urgent", pb.Triage_TRIAGE_ROUTINE: "routine"}[resp.GetTriage()])

			// The response's label map, in the phantom's slice order (the
			// phantom writes slices along the normal, as the reader sorts them).
			mk := resp.GetMasks()[0]
			zr, err := zlib.NewReader(bytes.NewReader(mk.GetDataZlib()))
			require.NoError(t, err)
			vox, err := io.ReadAll(zr)
			require.NoError(t, err)
			d := c.Truth.Dims
			require.Len(t, vox, d[0]*d[1]*d[2])
			maskPath := filepath.Join(dir, "mask.npy")
			f, err := os.Create(maskPath)
			require.NoError(t, err)
			require.NoError(t, tensor.WriteNpy(f, &tensor.Tensor{DType: tensor.Uint8, Shape: []int64{int64(d[0]), int64(d[1]), int64(d[2])}, Data: vox}))
			require.NoError(t, f.Close())
			segments := map[string]int{}
			for i := range mk.GetLabels() {
				segments[fmt.Sprint(i+1)] = i + 1
			}

			spec, err := bundle.Read(filepath.Join("../models", tc.model))
			require.NoError(t, err)
			kinds := map[string]string{}
			for _, o := range spec.Spec.Outputs {
				for _, m := range o.Measurements {
					kinds[m.Label+"/"+m.Name] = m.Type
				}
			}
			m := dicomcheck.Manifest{Source: paths, TruthLabels: maskPath, Segments: segments,
				SR: filepath.Join(dir, "sr.dcm"), SEG: filepath.Join(dir, "seg.dcm"), Triage: tc.triage}
			require.NoError(t, os.WriteFile(m.SR, resp.GetDicomSr(), 0o644))
			require.NoError(t, os.WriteFile(m.SEG, resp.GetDicomSeg(), 0o644))
			for _, x := range resp.GetMeasurements() {
				concept, _ := dicomout.MeasurementConcept(kinds[x.GetLabel()+"/"+x.GetName()], x.GetName(), c.Series.Modality)
				m.Measurements = append(m.Measurements, dicomcheck.ManifestMeasure{Label: x.GetLabel(), Meaning: concept.Meaning, Unit: x.GetUnit(), Value: x.GetValue()})
			}
			for _, x := range resp.GetFindings() {
				m.Findings = append(m.Findings, dicomcheck.ManifestFinding{Label: x.GetLabel(), Present: x.GetPresent()})
			}
			require.NotEmpty(t, m.Measurements)
			for _, p := range []string{m.SR, m.SEG} {
				errs, warns := dicomcheck.Dciodvfy(t, p)
				assert.Empty(t, errs, "dciodvfy errors in %s", filepath.Base(p))
				assert.Empty(t, warns, "dciodvfy warnings in %s", filepath.Base(p))
			}
			r := dicomcheck.Highdicom(t, m)
			assert.Empty(t, r.Errors)

			// Against the ground truth: the structures the model segments.
			for i, name := range mk.GetLabels() {
				truth := -1
				for v, l := range c.Truth.Labels {
					if l == name {
						truth = v
					}
				}
				if truth < 0 {
					continue
				}
				inter, a, b := 0, 0, 0
				for j, v := range vox {
					p, q := v == uint8(i+1), c.Labels[j] == uint8(truth)
					if p {
						a++
					}
					if q {
						b++
					}
					if p && q {
						inter++
					}
				}
				dice := 2 * float64(inter) / float64(max(a+b, 1))
				t.Logf("%s %s: Dice %.3f against the phantom truth; checked %v", tc.model, name, dice, r.Checked)
				assert.Greater(t, dice, tc.minDice, name)
			}
		})
	}
}

func TestDerivedOutputErrors(t *testing.T) {
	repo := testrepo.Write(t, testrepo.Affine(), testrepo.Hyperdensity())
	h := start(t, repo, Options{})
	s, _ := headCT()
	files, err := s.Encode()
	require.NoError(t, err)
	dicomIn := &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}
	noFoR := s
	noFoR.Omit = append(noFoR.Omit, tag.FrameOfReferenceUID)
	noForFiles, err := noFoR.Encode()
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		req  *pb.InferRequest
		code codes.Code
		msg  string
	}{
		{"SEG of a model without masks", &pb.InferRequest{Model: "affine", Input: dicomIn,
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_DICOM_SEG}}, codes.InvalidArgument, "outputs[0]: OUTPUT_KIND_DICOM_SEG: model \"affine\" has no mask output"},
		{"SR of a model without findings", &pb.InferRequest{Model: "affine", Input: dicomIn,
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_DICOM_SR}}, codes.InvalidArgument, "outputs[0]: OUTPUT_KIND_DICOM_SR: model \"affine\" has no scores or mask output"},
		{"SR of a tensor input", &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{}},
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_DICOM_SR}}, codes.InvalidArgument, "outputs[1]: OUTPUT_KIND_DICOM_SR needs DICOM input"},
		{"SEG without a frame of reference", &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: noForFiles}},
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_DICOM_SEG}}, codes.InvalidArgument, "(0020,0052) Frame of Reference UID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.client.Infer(ctxT(t), tc.req)
			require.Error(t, err)
			assert.Equal(t, tc.code, status.Code(err), err)
			assert.Contains(t, status.Convert(err).Message(), tc.msg)
		})
	}
	// The same study with its frame of reference gets both objects, and
	// the hyperdensity bundle (no triage rules) no triage.
	resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: dicomIn, Outputs: derivedOutputs, SegOmitEmptyFrames: true})
	require.NoError(t, err)
	assert.NotEmpty(t, resp.GetDicomSr())
	assert.NotEmpty(t, resp.GetDicomSeg())
	assert.Equal(t, pb.Triage_TRIAGE_UNSPECIFIED, resp.GetTriage())
}

// TestFractionalSEG: a bundle whose mask output says seg_type: fractional
// gets a FRACTIONAL SEG holding the output's probabilities on the source
// grid, read back exactly by highdicom.
func TestFractionalSEG(t *testing.T) {
	b := testrepo.Hyperdensity()
	b.YAML = strings.Replace(b.YAML, "    kind: mask\n", "    kind: mask\n    seg_type: fractional\n", 1)
	h := start(t, testrepo.Write(t, b), Options{})
	s, _ := headCT()
	files, err := s.Encode()
	require.NoError(t, err)
	dir := t.TempDir()
	var paths []string
	for k, f := range files {
		paths = append(paths, filepath.Join(dir, fmt.Sprintf("IM%04d.dcm", k)))
		require.NoError(t, os.WriteFile(paths[k], f, 0o644))
	}
	resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}},
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_TENSORS, pb.OutputKind_OUTPUT_KIND_DICOM_SEG}})
	require.NoError(t, err)
	var probs []float32
	for _, x := range resp.GetTensors() {
		if x.GetName() == "probability_map" {
			probs, err = (&tensor.Tensor{DType: tensor.Float32, Shape: x.GetShape(), Data: x.GetData()}).Float32s()
			require.NoError(t, err)
		}
	}
	require.Len(t, probs, s.Slices*s.Rows*s.Cols)
	want := make([]uint8, len(probs))
	for i, p := range probs {
		want[i] = uint8(math.Round(math.Min(math.Max(float64(p), 0), 1) * 255))
	}
	fr := filepath.Join(dir, "fractions.npy")
	f, err := os.Create(fr)
	require.NoError(t, err)
	require.NoError(t, tensor.WriteNpy(f, &tensor.Tensor{DType: tensor.Uint8, Shape: []int64{1, int64(s.Slices), int64(s.Rows), int64(s.Cols)}, Data: want}))
	require.NoError(t, f.Close())
	segPath := filepath.Join(dir, "seg.dcm")
	require.NoError(t, os.WriteFile(segPath, resp.GetDicomSeg(), 0o644))
	errs, warns := dicomcheck.Dciodvfy(t, segPath)
	assert.Empty(t, errs)
	assert.Empty(t, warns)
	r := dicomcheck.Highdicom(t, dicomcheck.Manifest{Source: paths, SEG: segPath, Segments: map[string]int{"1": 1}, Fractions: fr})
	assert.Empty(t, r.Errors)
	assert.Equal(t, true, r.Checked["seg_geometry"])
}

// TestPseudonymizedOutputs: with a pseudonymization key the SR and SEG
// pass dciodvfy and carry pseudonyms, not the study's identity, while the
// response itself still names the study for the caller.
func TestPseudonymizedOutputs(t *testing.T) {
	key, err := pseudo.NewKey([]byte(strings.Repeat("k", pseudo.MinKeyBytes)))
	require.NoError(t, err)
	h := start(t, testrepo.Write(t, testrepo.Hyperdensity()), Options{Pseudonymize: key})
	s, _ := headCT()
	s.PatientName, s.PatientID, s.StudyDate = "Doe^Jane", "MRN-7781", "20261203"
	files, err := s.Encode()
	require.NoError(t, err)
	resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}},
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_DICOM_SR, pb.OutputKind_OUTPUT_KIND_DICOM_SEG}})
	require.NoError(t, err)
	assert.Equal(t, s.StudyUID, resp.GetStudyInstanceUid(), "the response is for the caller, who sent the study")
	dir := t.TempDir()
	for name, b := range map[string][]byte{"sr.dcm": resp.GetDicomSr(), "seg.dcm": resp.GetDicomSeg()} {
		require.NotEmpty(t, b)
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		errs, warns := dicomcheck.Dciodvfy(t, p)
		assert.Empty(t, errs, name)
		assert.Empty(t, warns, name)
		for _, secret := range []string{s.PatientName, s.PatientID, s.StudyDate, s.StudyUID, s.SeriesUID} {
			assert.NotContains(t, string(b), secret, "%s leaks it", name)
		}
		assert.Contains(t, string(b), key.UID(s.StudyUID))
		assert.Contains(t, string(b), key.Patient(s.PatientID, ""))
	}
}

// TestBackgroundClass: a softmax model with a background channel, through
// a real server: its voxels are 0 in the mask, the other labels keep
// their values, and the SEG holds only the real segments, numbered from 1,
// and passes dciodvfy.
func TestBackgroundClass(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Tissue()), Options{})
	s, blood := headCT() // 30 HU everywhere, 70 HU (blood) in a 4x3x2 block
	files, err := s.Encode()
	require.NoError(t, err)
	resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "tissue", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}},
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_MASK, pb.OutputKind_OUTPUT_KIND_MEASUREMENTS, pb.OutputKind_OUTPUT_KIND_DICOM_SEG, pb.OutputKind_OUTPUT_KIND_DICOM_SR}})
	require.NoError(t, err)
	require.Len(t, resp.GetMasks(), 1)
	mk := resp.GetMasks()[0]
	assert.Equal(t, []string{"background", "blood", "bone"}, mk.GetLabels(), "labels keep their places: value i+1 is labels[i]")
	zr, err := zlib.NewReader(bytes.NewReader(mk.GetDataZlib()))
	require.NoError(t, err)
	vox, err := io.ReadAll(zr)
	require.NoError(t, err)
	counts := map[byte]int{}
	for _, v := range vox {
		counts[v]++
	}
	assert.Equal(t, map[byte]int{0: len(vox) - blood, 2: blood}, counts, "the background's voxels are 0")
	require.Len(t, resp.GetMeasurements(), 1)
	assert.InDelta(t, float64(blood)*0.5*0.6*3/1000, resp.GetMeasurements()[0].GetValue(), 1e-9, "blood volume, mL")

	dir := t.TempDir()
	for name, b := range map[string][]byte{"seg.dcm": resp.GetDicomSeg(), "sr.dcm": resp.GetDicomSr()} {
		require.NotEmpty(t, b, name)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
		errs, warns := dicomcheck.Dciodvfy(t, filepath.Join(dir, name))
		assert.Empty(t, errs, name)
		assert.Empty(t, warns, name)
	}
	ds, err := sd.ParseFile(filepath.Join(dir, "seg.dcm"), nil)
	require.NoError(t, err)
	e, err := ds.FindElementByTag(tag.SegmentSequence)
	require.NoError(t, err)
	var got []string
	for _, it := range e.Value.GetValue().([]*sd.SequenceItemValue) {
		var num, label string
		for _, el := range it.GetValue().([]*sd.Element) {
			switch el.Tag {
			case tag.SegmentNumber:
				num = fmt.Sprint(el.Value.GetValue())
			case tag.SegmentLabel:
				label = fmt.Sprint(el.Value.GetValue())
			}
		}
		got = append(got, num+" "+label)
	}
	assert.Equal(t, []string{"[1] [blood]", "[2] [bone]"}, got)
}
