package server

import (
	"bytes"
	"compress/zlib"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/kernels"
	"github.com/voxserve/voxserve/preprocess"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// headCT is a small CT series in HU (stored = HU + 1024) with a 70 HU block.
func headCT() (dicomwrite.Series, int) {
	s := dicomwrite.Series{
		Rows: 12, Cols: 10, Slices: 5, Spacing: [3]float64{0.5, 0.6, 3}, Origin: [3]float64{-20, -30, 100},
		Orientation: [6]float64{1, 0, 0, 0, 1, 0}, Slope: 1, Intercept: -1024, Modality: "CT", BodyPart: "HEAD",
		StudyUID: "1.2.826.0.1.1", SeriesUID: "1.2.826.0.1.1.2",
		Value: func(i, j, k int) int32 {
			if k >= 1 && k < 3 && j >= 4 && j < 7 && i >= 2 && i < 6 {
				return 70 + 1024
			}
			return 30 + 1024
		},
	}
	return s, 2 * 3 * 4
}

func dicomReq(t *testing.T, s dicomwrite.Series) *pb.InferRequest {
	files, err := s.Encode()
	require.NoError(t, err)
	return &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}}
}

func TestInferDICOM(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Hyperdensity()), Options{})
	s, blood := headCT()
	req := dicomReq(t, s)
	// Instances in any order, with a non-DICOM file among them.
	in := req.GetDicom().Instances
	in[0], in[4] = in[4], in[0]
	req.GetDicom().Instances = append(in, []byte("README: not an image"))

	resp, err := h.client.Infer(ctxT(t), req)
	require.NoError(t, err)
	require.Len(t, resp.GetFindings(), 1)
	assert.True(t, resp.Findings[0].GetPresent())
	require.Len(t, resp.GetMasks(), 1)
	m := resp.Masks[0]
	assert.Equal(t, []int64{5, 12, 10}, m.GetDims())
	assert.InDeltaSlice(t, []float64{0.5, 0.6, 3}, m.GetGeometry().GetSpacing(), 1e-9)
	assert.Equal(t, []float64{-20, -30, 100}, m.GetGeometry().GetOrigin())
	zr, err := zlib.NewReader(bytes.NewReader(m.GetDataZlib()))
	require.NoError(t, err)
	labels, err := io.ReadAll(zr)
	require.NoError(t, err)
	n := 0
	for k := 0; k < 5; k++ {
		for j := 0; j < 12; j++ {
			for i := 0; i < 10; i++ {
				if labels[(k*12+j)*10+i] == 1 {
					n++
					assert.Equal(t, int32(70+1024), s.Value(i, j, k), "voxel %d,%d,%d", i, j, k)
				}
			}
		}
	}
	assert.Equal(t, blood, n)
	assert.Contains(t, resp.GetWarnings(), "skipped instances[5]: not a DICOM file")
}

func TestInferStreamDICOM(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Hyperdensity()), Options{})
	s, _ := headCT()
	files, err := s.Encode()
	require.NoError(t, err)
	stream, err := h.client.InferStream(ctxT(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Header{Header: &pb.InferRequest{Model: "hyperdensity", RequestId: "s1",
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_DICOM_SR, pb.OutputKind_OUTPUT_KIND_DICOM_SEG}}}}))
	for _, f := range files {
		require.NoError(t, stream.Send(&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Instances{Instances: &pb.DicomInput{Instances: [][]byte{f}}}}))
	}
	resp, err := stream.CloseAndRecv()
	require.NoError(t, err)
	assert.Equal(t, "s1", resp.GetRequestId())
	assert.True(t, resp.GetFindings()[0].GetPresent())
	// Streamed instances get the DICOM outputs too.
	assert.Equal(t, "DICM", string(resp.GetDicomSr()[128:132]))
	assert.Equal(t, "DICM", string(resp.GetDicomSeg()[128:132]))
	assert.Equal(t, s.StudyUID, resp.GetStudyInstanceUid())

	// A stream without its header is refused.
	stream, err = h.client.InferStream(ctxT(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Instances{Instances: &pb.DicomInput{Instances: files}}}))
	_, err = stream.CloseAndRecv()
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestInferDICOMErrors(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Hyperdensity()), Options{})
	mr, _ := headCT()
	mr.Modality = "MR"
	_, err := h.client.Infer(ctxT(t), dicomReq(t, mr))
	assert.Equal(t, codes.FailedPrecondition, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), `model "hyperdensity" accepts modality CT, the study is MR`)

	j2k, _ := headCT()
	j2k.Syntax = "1.2.840.10008.1.2.4.90"
	_, err = h.client.Infer(ctxT(t), dicomReq(t, j2k))
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "instances[0]: (7FE0,0010) Pixel Data: is not encapsulated, but the transfer syntax 1.2.840.10008.1.2.4.90 (JPEG 2000 Lossless) is compressed")

	// Two series of the same modality: ambiguous.
	a, _ := headCT()
	b, _ := headCT()
	b.SeriesUID = "1.2.826.0.1.1.3"
	fa, err := a.Encode()
	require.NoError(t, err)
	fb, err := b.Encode()
	require.NoError(t, err)
	_, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: append(fa, fb...)}}})
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "2 image series")

	// A missing slice is a warning by default, an error when strict.
	gap, _ := headCT()
	files, err := gap.Encode()
	require.NoError(t, err)
	files = append(files[:2], files[3:]...)
	resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}})
	require.NoError(t, err)
	assert.Contains(t, resp.GetWarnings()[0], "1 missing slices")
}

// A bundle that declares preprocessing: brain window, 1 mm in-plane
// resampling, 2D slices padded to 16x16; masks come back on the study grid.
const windowedYAML = `name: windowed
task: both
modalities: [CT]
inputs:
  - name: image
    data_type: float32
    dims: [1, 16, 16]
preprocessing:
  windows:
    - {name: brain, center: 40, width: 80}
  target_spacing: [1, 1, 0]
  in_plane_size: [16, 16]
  layout: slices
outputs:
  - name: probability_map
    data_type: float32
    dims: [1, 16, 16]
    kind: mask
    labels: [{name: dense}]
  - name: score
    data_type: float32
    dims: [1]
    kind: scores
    labels: [{name: dense region}]
max_batch_size: 2
`

// Patches over raw HU: no resampling, so the mask must come back exactly.
const patchesYAML = `name: patched
task: segmentation
inputs:
  - name: image
    data_type: float32
    dims: [1, 4, 6, 6]
preprocessing:
  layout: patches
  patch_size: [6, 6, 4]
  overlap: 0.5
  pad_value: -1000
outputs:
  - name: probability_map
    data_type: float32
    dims: [1, 4, 6, 6]
    kind: mask
    labels: [{name: dense}]
  - name: score
    data_type: float32
    dims: [1]
    kind: scores
    labels: [{name: dense region}]
max_batch_size: 4
`

func TestInferWithPreprocessing(t *testing.T) {
	repo := testrepo.Write(t,
		testrepo.Bundle{Name: "windowed", YAML: windowedYAML, Versions: map[int64][]byte{1: onnxbuild.Threshold2D(0.75, 40).Marshal()}},
		testrepo.Bundle{Name: "patched", YAML: patchesYAML, Versions: map[int64][]byte{1: onnxbuild.Hyperdensity(60, 5).Marshal()}})
	h := start(t, repo, Options{})
	s, blood := headCT()
	files, err := s.Encode()
	require.NoError(t, err)
	for _, model := range []string{"windowed", "patched"} {
		t.Run(model, func(t *testing.T) {
			resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: model, Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}})
			require.NoError(t, err)
			assert.True(t, resp.GetFindings()[0].GetPresent())
			m := resp.GetMasks()[0]
			assert.Equal(t, []int64{5, 12, 10}, m.GetDims(), "mask on the study's grid")
			zr, err := zlib.NewReader(bytes.NewReader(m.GetDataZlib()))
			require.NoError(t, err)
			labels, err := io.ReadAll(zr)
			require.NoError(t, err)
			n, outside := 0, 0
			for k := 0; k < 5; k++ {
				for j := 0; j < 12; j++ {
					for i := 0; i < 10; i++ {
						if labels[(k*12+j)*10+i] == 1 {
							n++
							// Resampling may blur the edge by a voxel, never more.
							if !(k >= 1 && k < 3 && j >= 3 && j < 8 && i >= 1 && i < 7) {
								outside++
							}
						}
					}
				}
			}
			assert.Zero(t, outside)
			if model == "patched" {
				assert.Equal(t, blood, n)
			} else {
				// Halving the in-plane resolution of a 4x3-voxel block keeps
				// its core only: some voxels, all inside.
				assert.Positive(t, n)
			}
		})
	}
}

func TestUndecodedSyntaxIsUnimplemented(t *testing.T) {
	matches, _ := filepath.Glob("../.venv/lib/python*/site-packages/pydicom/data/test_files/MR_small_jp2klossless.dcm")
	if len(matches) == 0 {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatal("pydicom's test files are missing; run make test")
		}
		t.Skip("no .venv with pydicom's test files")
	}
	data, err := os.ReadFile(matches[0])
	require.NoError(t, err)
	b := testrepo.Hyperdensity()
	b.YAML = strings.Replace(b.YAML, "modalities: [CT]", "modalities: [CT, MR]", 1)
	h := start(t, testrepo.Write(t, b), Options{})
	_, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: [][]byte{data}}}})
	assert.Equal(t, codes.Unimplemented, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "instances[0]: (0002,0010) Transfer Syntax UID: 1.2.840.10008.1.2.4.90 (JPEG 2000 Lossless) is not decoded")
}

// Measurements asked for alone are still taken on the study's grid.
func TestMeasurementsWithoutMasks(t *testing.T) {
	yaml := strings.Replace(patchesYAML, "    labels: [{name: dense}]\n", "    labels: [{name: dense}]\n    measurements: [{name: dense volume, type: volume, label: dense}]\n", 1)
	repo := testrepo.Write(t, testrepo.Bundle{Name: "patched", YAML: yaml, Versions: map[int64][]byte{1: onnxbuild.Hyperdensity(60, 5).Marshal()}})
	h := start(t, repo, Options{})
	s, blood := headCT()
	files, err := s.Encode()
	require.NoError(t, err)
	for _, outputs := range [][]pb.OutputKind{{pb.OutputKind_OUTPUT_KIND_MEASUREMENTS}, nil} {
		resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "patched", Outputs: outputs, Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}})
		require.NoError(t, err)
		require.Len(t, resp.GetMeasurements(), 1)
		m := resp.Measurements[0]
		assert.Equal(t, "mL", m.GetUnit())
		assert.InDelta(t, float64(blood)*0.5*0.6*3/1000, m.GetValue(), 1e-9)
		if outputs != nil {
			assert.Empty(t, resp.GetMasks())
		}
	}
}

// countingAccel is the CPU implementation behind a name, counting its calls
// (or failing), standing in for the GPU.
type countingAccel struct {
	calls, labels atomic.Int32
	fail          bool
}

func (*countingAccel) Name() string { return "test accelerator" }

func (a *countingAccel) WindowResample(src []float32, dims [3]int, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error {
	a.calls.Add(1)
	if a.fail {
		return errors.New("device lost")
	}
	return kernels.CPU{}.WindowResample(src, dims, maps, ws, out)
}

func (a *countingAccel) SourceLabels(ch *preprocess.Channels, model, source volume.Geometry, size [3]int, act string, th []float64, minVoxels int) ([]uint8, error) {
	a.labels.Add(1)
	if a.fail {
		return nil, errors.New("device lost")
	}
	return kernels.CPU{}.SourceLabels(ch, model, source, size, act, th, minVoxels)
}

// acceleratorCase is a repository with a windowed bundle (its fused pass
// accelerated) and a patched one (nothing to accelerate), a head CT request
// for the windowed one, and the CPU's answer to it.
func acceleratorCase(t *testing.T) (string, *pb.InferRequest, *pb.InferResponse) {
	repo := testrepo.Write(t,
		testrepo.Bundle{Name: "windowed", YAML: windowedYAML, Versions: map[int64][]byte{1: onnxbuild.Threshold2D(0.75, 40).Marshal()}},
		testrepo.Bundle{Name: "patched", YAML: patchesYAML, Versions: map[int64][]byte{1: onnxbuild.Hyperdensity(60, 5).Marshal()}})
	s, _ := headCT()
	files, err := s.Encode()
	require.NoError(t, err)
	req := &pb.InferRequest{Model: "windowed", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}}
	want, err := start(t, repo, Options{}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	return repo, req, want
}

// With an accelerator the windowed bundle's fused pass runs there and the
// answer is the CPU's; GetModel says where preprocessing runs; a failing
// accelerator falls back to the CPU with a warning.
func TestInferWithAccelerator(t *testing.T) {
	repo, req, want := acceleratorCase(t)

	acc := &countingAccel{}
	h := start(t, repo, Options{Accelerator: acc})
	got, err := h.client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, int32(1), acc.calls.Load())
	assert.Equal(t, int32(1), acc.labels.Load())
	assert.Equal(t, want.GetFindings()[0].GetProbability(), got.GetFindings()[0].GetProbability())
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Equal(t, want.GetMasks()[0].GetDims(), got.GetMasks()[0].GetDims())
	// Patches: no windows to accelerate, but the mask is labelled there.
	preq := &pb.InferRequest{Model: "patched", Input: req.Input}
	pwant, err := start(t, repo, Options{}).client.Infer(ctxT(t), preq)
	require.NoError(t, err)
	pgot, err := h.client.Infer(ctxT(t), preq)
	require.NoError(t, err)
	assert.Equal(t, int32(2), acc.labels.Load())
	assert.Equal(t, pwant.GetMasks()[0].GetDataZlib(), pgot.GetMasks()[0].GetDataZlib())
	// The study's preprocessing time is in the metrics.
	mresp, err := http.Get(h.httpURL + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	assert.Contains(t, string(body), `voxserve_preprocess_duration_seconds_count{model="windowed",version="1"} 1`)
	info, err := h.client.GetModel(ctxT(t), &pb.GetModelRequest{Name: "windowed"})
	require.NoError(t, err)
	assert.Equal(t, "test accelerator", info.GetPreprocessingDevice())
	info, err = h.client.GetModel(ctxT(t), &pb.GetModelRequest{Name: "patched"}) // no windows: nothing to accelerate
	require.NoError(t, err)
	assert.Equal(t, "cpu", info.GetPreprocessingDevice())

	failing := &countingAccel{fail: true}
	got, err = start(t, repo, Options{Accelerator: failing}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Contains(t, strings.Join(got.GetWarnings(), "\n"), "preprocessing on test accelerator failed (device lost); ran on the CPU")
	assert.Contains(t, strings.Join(got.GetWarnings(), "\n"), "labelling probability_map on test accelerator failed (device lost); ran on the CPU")
}

// lendingAccel also lends the memory volumes are decoded into, as
// kernels.GPU lends page-locked buffers, and checks that the fused pass
// reads the study from it.
type lendingAccel struct {
	countingAccel
	mu         sync.Mutex
	lent, back int
	bufs       []unsafe.Pointer // the first element of each lent buffer
	fromLent   int              // fused passes that read a lent buffer
	int16s     int              // of them, int16 stored values
}

func lend[T any](a *lendingAccel, n int) ([]T, func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lent++
	b := make([]T, n)
	a.bufs = append(a.bufs, unsafe.Pointer(&b[0]))
	return b, func() {
		a.mu.Lock()
		a.back++
		a.mu.Unlock()
	}
}

func (a *lendingAccel) HostFloat32s(n int) ([]float32, func()) { return lend[float32](a, n) }
func (a *lendingAccel) HostInt16s(n int) ([]int16, func())     { return lend[int16](a, n) }

func (a *lendingAccel) readLent(p unsafe.Pointer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.bufs {
		if b == p {
			a.fromLent++
		}
	}
}

func (a *lendingAccel) WindowResample(src []float32, dims [3]int, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error {
	a.readLent(unsafe.Pointer(&src[0]))
	return a.countingAccel.WindowResample(src, dims, maps, ws, out)
}

func (a *lendingAccel) WindowResampleI16(src []int16, dims [3]int, slope, intercept float32, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error {
	a.readLent(unsafe.Pointer(&src[0]))
	a.mu.Lock()
	a.int16s++
	a.mu.Unlock()
	a.calls.Add(1)
	return kernels.CPU{}.WindowResampleI16(src, dims, slope, intercept, maps, ws, out)
}

// A study for a bundle whose preprocessing the accelerator runs is decoded
// into memory the accelerator lends, read from there by the fused pass,
// and given back by the time the answer comes, also when the request
// fails; a bundle it does not accelerate keeps Go memory.
func TestInferDecodesIntoLentMemory(t *testing.T) {
	repo, req, want := acceleratorCase(t)

	acc := &lendingAccel{}
	h := start(t, repo, Options{Accelerator: acc})
	got, err := h.client.Infer(ctxT(t), req)
	require.NoError(t, err)
	// The CT's stored values fit int16 under one rescale: the fused pass
	// reads them as int16 and the answer is the CPU's, exactly.
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Equal(t, want.GetFindings()[0].GetProbability(), got.GetFindings()[0].GetProbability())
	assert.Equal(t, want.GetMeasurements(), got.GetMeasurements())
	acc.mu.Lock()
	assert.Equal(t, 1, acc.lent)
	assert.Equal(t, 1, acc.back)
	assert.Equal(t, 1, acc.fromLent, "the fused pass read the lent memory")
	assert.Equal(t, 1, acc.int16s, "as int16 stored values")
	acc.mu.Unlock()

	_, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "patched", Input: req.Input})
	require.NoError(t, err)
	// Bad input after the study was decoded: the memory still comes back.
	_, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "windowed", Input: req.Input,
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_DICOM_SEG}, SegOmitEmptyFrames: true, Priority: pb.Priority(99)})
	require.Error(t, err)
	acc.mu.Lock()
	defer acc.mu.Unlock()
	assert.Equal(t, 2, acc.lent, "patched has no windows: Go memory")
	assert.Equal(t, acc.lent, acc.back)
}

// Of several series in one request, the ones not picked go back at once;
// when none can be picked, all of them do.
func TestLentMemoryOfSeveralSeries(t *testing.T) {
	repo, req, _ := acceleratorCase(t)
	ct := req.GetDicom().GetInstances()
	mr, _ := headCT()
	mr.SeriesUID, mr.Modality = mr.SeriesUID+".7", "MR"
	mrFiles, err := mr.Encode()
	require.NoError(t, err)
	ct2, _ := headCT()
	ct2.SeriesUID += ".8"
	ct2Files, err := ct2.Encode()
	require.NoError(t, err)

	acc := &lendingAccel{}
	h := start(t, repo, Options{Accelerator: acc})
	both := append(append([][]byte{}, ct...), mrFiles...)
	_, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "windowed", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: both}}})
	require.NoError(t, err, "the CT is picked, the MR is not")
	two := append(append([][]byte{}, ct...), ct2Files...)
	_, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "windowed", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: two}}})
	require.ErrorContains(t, err, "send one series")
	acc.mu.Lock()
	defer acc.mu.Unlock()
	assert.Equal(t, 4, acc.lent)
	assert.Equal(t, 4, acc.back)
}

// residentAccel also leaves the model input in "device" memory (host
// memory standing in for a GPU's), as kernels.GPU.PrepareSlabs does.
type residentAccel struct {
	lendingAccel
	prepared, released atomic.Int32
	failPrepare        bool
	// Outputs lent to the model and labelled where it wrote them.
	buffers, buffersBack, residentLabels atomic.Int32
	failLabels                           bool
}

func (a *residentAccel) ResidentBuffer(n int) (preprocess.Resident, error) {
	a.buffers.Add(1)
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xff // NaN: bytes the model never wrote show
	}
	return preprocess.Resident{DeviceBytes: tensor.DeviceBytes{Addr: uintptr(unsafe.Pointer(&b[0])), Len: n, Host: b},
		Release: func() { a.buffersBack.Add(1) }}, nil
}

func (a *residentAccel) ReadResident(dst []byte, src tensor.DeviceBytes) error {
	copy(dst, src.Host)
	return nil
}

func (a *residentAccel) SourceLabelsResident(rc preprocess.ResidentChannels, model, source volume.Geometry, size [3]int, act string, th []float64, minVoxels int) ([]uint8, error) {
	a.residentLabels.Add(1)
	if a.failLabels {
		return nil, errors.New("device lost")
	}
	v := unsafe.Slice((*float32)(unsafe.Pointer(&rc.Bytes.Host[0])), len(rc.Bytes.Host)/4)
	ch, err := rc.Gather(v)
	if err != nil {
		return nil, err
	}
	return kernels.CPU{}.SourceLabels(ch, model, source, size, act, th, minVoxels)
}

func (*residentAccel) ResidentMemory() (string, int) { return "host", 0 }

func (a *residentAccel) PrepareSlabs(src16 []int16, src32 []float32, dims [3]int, slope, icpt float32, maps [3]preprocess.AxisMap, ws []preprocess.Window, lay preprocess.SlabLayout) (preprocess.Resident, error) {
	ch, err := a.channels(src16, src32, dims, slope, icpt, maps, ws)
	if err != nil {
		return preprocess.Resident{}, err
	}
	return a.lend(lay.Bytes(preprocess.SlabsCropped(ch, lay))), nil
}

func (a *residentAccel) PreparePatches(src16 []int16, src32 []float32, dims [3]int, slope, icpt float32, maps [3]preprocess.AxisMap, ws []preprocess.Window, lay preprocess.PatchLayout) (preprocess.Resident, error) {
	ch, err := a.channels(src16, src32, dims, slope, icpt, maps, ws)
	if err != nil {
		return preprocess.Resident{}, err
	}
	return a.lend(lay.Bytes(preprocess.PatchesTensor(ch, lay))), nil
}

// channels is the fused pass, on the CPU.
func (a *residentAccel) channels(src16 []int16, src32 []float32, dims [3]int, slope, icpt float32, maps [3]preprocess.AxisMap, ws []preprocess.Window) (*preprocess.Channels, error) {
	if a.failPrepare {
		return nil, errors.New("device lost")
	}
	a.prepared.Add(1)
	size := [3]int{len(maps[0].W), len(maps[1].W), len(maps[2].W)}
	ch := &preprocess.Channels{C: len(ws), NX: size[0], NY: size[1], NZ: size[2], V: make([]float32, len(ws)*size[0]*size[1]*size[2])}
	var err error
	if src16 != nil {
		err = kernels.CPU{}.WindowResampleI16(src16, dims, slope, icpt, maps, ws, ch.V)
	} else {
		err = kernels.CPU{}.WindowResample(src32, dims, maps, ws, ch.V)
	}
	return ch, err
}

// lend leaves b in "device" memory.
func (a *residentAccel) lend(b []byte) preprocess.Resident {
	return preprocess.Resident{DeviceBytes: tensor.DeviceBytes{Addr: uintptr(unsafe.Pointer(&b[0])), Len: len(b), Host: b},
		Release: func() { a.released.Add(1) }}
}

// boundWindowed is acceleratorCase's windowed bundle with its inputs and
// outputs bound (host memory on the CPU, as a GPU binds device memory).
func boundWindowed(t *testing.T) (string, *pb.InferRequest, *pb.InferResponse) {
	_, req, want := acceleratorCase(t)
	bound := testrepo.Bundle{Name: "windowed", YAML: windowedYAML + "execution:\n  io_binding: on\n",
		Versions: map[int64][]byte{1: onnxbuild.Threshold2D(0.75, 40).Marshal()}}
	return testrepo.Write(t, bound), req, want
}

// With the model's inputs bound in the accelerator's memory, the study is
// preprocessed into that memory and the model reads it there: the answer
// is the CPU path's, and the input's memory goes back after the request.
// A failure there falls back through the host, with a warning.
func TestInferResidentInput(t *testing.T) {
	repo, req, want := boundWindowed(t)
	acc := &residentAccel{}
	h := start(t, repo, Options{Accelerator: acc})
	got, err := h.client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, int32(1), acc.prepared.Load())
	assert.Equal(t, int32(1), acc.released.Load())
	assert.Equal(t, want.GetFindings()[0].GetProbability(), got.GetFindings()[0].GetProbability())
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Empty(t, got.GetWarnings())
	info, err := h.client.GetModel(ctxT(t), &pb.GetModelRequest{Name: "windowed"})
	require.NoError(t, err)
	assert.Equal(t, "host memory", info.GetIoBinding())

	failing := &residentAccel{failPrepare: true}
	got, err = start(t, repo, Options{Accelerator: failing}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Contains(t, strings.Join(got.GetWarnings(), "\n"), "preprocessing into the model's memory on test accelerator failed (device lost); ran through the host")
}

// With the model's outputs bound in the accelerator's memory, the mask
// output is written into memory the accelerator lends and labelled there:
// the answer is the CPU path's, nothing is labelled from the host, and
// the memory goes back. If labelling there fails, the output is read back
// and labelled through the host, with a warning. Raw tensors asked for
// keep the outputs on the host.
func TestInferResidentOutputs(t *testing.T) {
	repo, req, want := boundWindowed(t)
	acc := &residentAccel{}
	h := start(t, repo, Options{Accelerator: acc})
	got, err := h.client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Empty(t, got.GetWarnings())
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Equal(t, want.GetFindings()[0].GetProbability(), got.GetFindings()[0].GetProbability())
	assert.Equal(t, int32(1), acc.buffers.Load(), "one mask output")
	assert.Equal(t, int32(1), acc.buffersBack.Load())
	assert.Equal(t, int32(1), acc.residentLabels.Load())
	assert.Equal(t, int32(0), acc.labels.Load(), "nothing labelled from the host")

	failing := &residentAccel{failLabels: true}
	got, err = start(t, repo, Options{Accelerator: failing}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Contains(t, strings.Join(got.GetWarnings(), "\n"), "labelling probability_map where the model wrote it on test accelerator failed (device lost); ran through the host")
	assert.Equal(t, int32(1), failing.labels.Load(), "labelled from the host instead")
	assert.Equal(t, failing.buffers.Load(), failing.buffersBack.Load())

	raw := &residentAccel{}
	withTensors := &pb.InferRequest{Model: "windowed", Input: req.Input,
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_MASK, pb.OutputKind_OUTPUT_KIND_TENSORS}}
	got, err = start(t, repo, Options{Accelerator: raw}).client.Infer(ctxT(t), withTensors)
	require.NoError(t, err)
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.NotEmpty(t, got.GetTensors())
	assert.Equal(t, int32(0), raw.buffers.Load())
}

// A response names the steps of its phases in the order they ran, each
// within its phase's time.
func TestInferReportsStages(t *testing.T) {
	repo, req, _ := acceleratorCase(t)
	resp, err := start(t, repo, Options{}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	tm := resp.GetTimings()
	var names []string
	us := map[string]int64{}
	for _, st := range tm.GetStages() {
		names = append(names, st.GetName())
		us[st.GetName()] = st.GetUs()
		assert.GreaterOrEqual(t, st.GetUs(), int64(0), st.GetName())
	}
	assert.Equal(t, []string{"dicom", "prepare", "batch_input", "model", "batch_output", "labels", "measurements", "masks"}, names)
	assert.LessOrEqual(t, us["dicom"]+us["prepare"], tm.GetPreprocessUs())
	assert.LessOrEqual(t, us["labels"]+us["measurements"]+us["masks"], tm.GetPostprocessUs())
	assert.LessOrEqual(t, us["model"], tm.GetInferenceUs())

	sr := proto.Clone(req).(*pb.InferRequest)
	sr.Outputs = []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_DICOM_SEG}
	resp, err = start(t, repo, Options{}).client.Infer(ctxT(t), sr)
	require.NoError(t, err)
	names = nil
	for _, st := range resp.GetTimings().GetStages() {
		names = append(names, st.GetName())
	}
	assert.Equal(t, []string{"dicom", "prepare", "batch_input", "model", "batch_output", "labels", "measurements", "dicom_outputs"}, names, "no mask asked for: none compressed")
}

// A model that takes and gives float16 (exported in half precision): the
// study is preprocessed into float16, its outputs are read as float32, and
// the answer is the float32 model's to half precision; with its input
// prepared in the accelerator's memory the answer is the same, exactly.
func TestInferFloat16Model(t *testing.T) {
	_, req, want := acceleratorCase(t)
	halfYAML := strings.ReplaceAll(windowedYAML, "data_type: float32", "data_type: float16")
	half := testrepo.Bundle{Name: "windowed", YAML: halfYAML, Versions: map[int64][]byte{1: onnxbuild.Threshold2DHalf(0.75, 40).Marshal()}}
	got, err := start(t, testrepo.Write(t, half), Options{}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.InDelta(t, want.GetFindings()[0].GetProbability(), got.GetFindings()[0].GetProbability(), 2e-3)
	assert.Equal(t, want.GetMasks()[0].GetDims(), got.GetMasks()[0].GetDims())
	wm, gm := inflateMask(t, want.GetMasks()[0]), inflateMask(t, got.GetMasks()[0])
	differ := 0
	for i := range wm {
		if wm[i] != gm[i] {
			differ++
		}
	}
	assert.Less(t, differ, len(wm)/100, "voxels labelled differently at half precision")

	half.YAML += "execution:\n  io_binding: on\n"
	acc := &residentAccel{}
	bound, err := start(t, testrepo.Write(t, half), Options{Accelerator: acc}).client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Equal(t, int32(1), acc.prepared.Load(), "the float16 input prepared in the accelerator's memory")
	assert.Equal(t, got.GetFindings()[0].GetProbability(), bound.GetFindings()[0].GetProbability())
	assert.Equal(t, got.GetMasks()[0].GetDataZlib(), bound.GetMasks()[0].GetDataZlib())
	assert.Empty(t, bound.GetWarnings())
}

func inflateMask(t *testing.T, m *pb.Mask) []byte {
	r, err := zlib.NewReader(bytes.NewReader(m.GetDataZlib()))
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}

// A windowed 3D bundle cut into sliding-window patches: its patches are
// extracted into the accelerator's memory, and its patch predictions
// stitched and labelled there; the answer is the CPU path's.
func TestInferResidentPatches(t *testing.T) {
	_, req, _ := acceleratorCase(t)
	yaml := strings.Replace(patchesYAML, "  layout: patches\n", "  layout: patches\n  windows: [{name: brain, center: 40, width: 80}]\n", 1)
	b := testrepo.Bundle{Name: "patched", YAML: yaml, Versions: map[int64][]byte{1: onnxbuild.Hyperdensity(0.7, 0.05).Marshal()}}
	preq := &pb.InferRequest{Model: "patched", Input: req.Input}
	want, err := start(t, testrepo.Write(t, b), Options{}).client.Infer(ctxT(t), preq)
	require.NoError(t, err)
	b.YAML += "execution:\n  io_binding: on\n"
	acc := &residentAccel{}
	got, err := start(t, testrepo.Write(t, b), Options{Accelerator: acc}).client.Infer(ctxT(t), preq)
	require.NoError(t, err)
	assert.Empty(t, got.GetWarnings())
	assert.Equal(t, int32(1), acc.prepared.Load(), "patches extracted in the accelerator's memory")
	assert.Equal(t, int32(1), acc.residentLabels.Load(), "predictions stitched and labelled there")
	assert.Equal(t, int32(0), acc.labels.Load())
	assert.Equal(t, acc.buffers.Load(), acc.buffersBack.Load())
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
	assert.Equal(t, want.GetFindings()[0].GetProbability(), got.GetFindings()[0].GetProbability())
	assert.NotZero(t, countMask(t, got.GetMasks()[0]), "something to label")
}

func countMask(t *testing.T, m *pb.Mask) int {
	n := 0
	for _, v := range inflateMask(t, m) {
		if v != 0 {
			n++
		}
	}
	return n
}

// losingAccel is an accelerator whose device can be lost, as kernels.GPU
// reports CUDA's sticky errors: after that its calls fail.
type losingAccel struct {
	countingAccel
	mu    sync.Mutex
	hooks []func(error)
}

func (a *losingAccel) OnLost(f func(error)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hooks = append(a.hooks, f)
}

func (a *losingAccel) lose(err error) {
	a.fail = true
	a.mu.Lock()
	hooks := a.hooks
	a.mu.Unlock()
	for _, f := range hooks {
		f(err)
	}
}

// Once the GPU is lost to the process, the server asks to be restarted:
// gRPC health NOT_SERVING (the server's and each model's, and it stays
// so when models load), /healthz 500 and /readyz 503 saying why, KServe's
// ServerLive and ServerReady false. Until then it still answers, on the
// CPU.
func TestDeviceLostMakesTheServerUnhealthy(t *testing.T) {
	repo, req, want := acceleratorCase(t)
	acc := &losingAccel{}
	h := start(t, repo, Options{Accelerator: acc})
	hc := healthpb.NewHealthClient(h.conn)
	k := kpb.NewGRPCInferenceServiceClient(h.conn)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: service})
		require.NoError(t, err)
		return r.GetStatus()
	}
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, check(""))

	acc.lose(errors.New("cuda: cuStreamSynchronize: CUDA_ERROR_ILLEGAL_ADDRESS (700)"))
	acc.lose(errors.New("a second error is not news"))
	for _, svc := range []string{"", ServiceName, "windowed", "patched"} {
		assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, check(svc), svc)
	}
	_, err := h.reg.Load("windowed", nil)
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, check(""), "a load does not bring health back")
	for path, code := range map[string]int{"/healthz": http.StatusInternalServerError, "/readyz": http.StatusServiceUnavailable} {
		resp, err := http.Get(h.httpURL + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, code, resp.StatusCode, path)
		if path == "/healthz" {
			assert.Contains(t, string(body), "the GPU was lost to this process (the preprocessing kernels: cuda: cuStreamSynchronize: CUDA_ERROR_ILLEGAL_ADDRESS (700)); restart it")
		}
	}
	live, err := k.ServerLive(ctxT(t), &kpb.ServerLiveRequest{})
	require.NoError(t, err)
	assert.False(t, live.GetLive())
	ready, err := k.ServerReady(ctxT(t), &kpb.ServerReadyRequest{})
	require.NoError(t, err)
	assert.False(t, ready.GetReady())

	got, err := h.client.Infer(ctxT(t), req)
	require.NoError(t, err, "still answering, on the CPU")
	assert.Equal(t, want.GetMasks()[0].GetDataZlib(), got.GetMasks()[0].GetDataZlib())
}
