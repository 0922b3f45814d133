package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/audit"
	"github.com/voxserve/voxserve/findings"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// auditedMethods are the calls the audit log records whatever their
// outcome: inference and model administration. Other calls are recorded
// only when refused for want of credentials or a role.
var auditedMethods = map[string]bool{
	"/voxserve.v1.Inference/Infer":                          true,
	"/voxserve.v1.Inference/InferStream":                    true,
	"/voxserve.v1.Inference/LoadModel":                      true,
	"/voxserve.v1.Inference/UnloadModel":                    true,
	"/inference.GRPCInferenceService/ModelInfer":            true,
	"/inference.GRPCInferenceService/ModelStreamInfer":      true,
	"/inference.GRPCInferenceService/RepositoryModelLoad":   true,
	"/inference.GRPCInferenceService/RepositoryModelUnload": true,
}

func refused(err error) bool {
	c := status.Code(err)
	return c == codes.Unauthenticated || c == codes.PermissionDenied
}

// auditCall is a call on its way to the audit log.
type auditCall struct {
	rec audit.Record
	// The input's parts are hashed as they arrive, each on a goroutine of
	// its own, so that hashing a study costs the request no time where
	// cores are idle, and a part is not kept once hashed.
	sums  []chan [sha256.Size]byte
	bytes int64
	input *audit.Input // set when the input is not hashed (shared memory)
	isInf bool         // an inference call: its record has an input
}

// beginAudit starts a record for a call, nil if the call is not audited.
func (s *Server) beginAudit(ctx context.Context, method string, req any, authErr error) *auditCall {
	if s.opts.Audit == nil || (!auditedMethods[method] && !refused(authErr)) {
		return nil
	}
	a := &auditCall{rec: audit.Record{Method: method}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		a.rec.Peer = p.Addr.String()
	}
	if authErr != nil {
		return a
	}
	switch r := req.(type) {
	case *pb.InferRequest:
		a.rec.Model, a.rec.Version, a.rec.RequestID = r.GetModel(), r.GetVersion(), r.GetRequestId()
		a.isInf = true
		a.add(inferParts(r)...)
	case *kpb.ModelInferRequest:
		a.rec.Model, a.rec.Version, a.rec.RequestID = r.GetModelName(), r.GetModelVersion(), r.GetId()
		a.isInf = true
		parts, shm := kserveParts(r)
		if shm {
			a.input = &audit.Input{Parts: len(r.GetInputs()), Note: "inputs in shared memory are not hashed"}
		} else {
			a.add(parts...)
		}
	case *pb.LoadModelRequest:
		a.rec.Model = r.GetName()
	case *pb.UnloadModelRequest:
		a.rec.Model, a.rec.Version = r.GetName(), r.GetVersion()
	case *kpb.RepositoryModelLoadRequest:
		a.rec.Model = r.GetModelName()
	case *kpb.RepositoryModelUnloadRequest:
		a.rec.Model = r.GetModelName()
	}
	return a
}

// add starts hashing parts of the input, in the order received.
func (a *auditCall) add(parts ...[]byte) {
	for _, p := range parts {
		c := make(chan [sha256.Size]byte, 1)
		a.sums = append(a.sums, c)
		a.bytes += int64(len(p))
		go func() { c <- sha256.Sum256(p) }()
	}
}

// inputRecord waits for the parts' hashes: the sha256 of their sha256s.
func (a *auditCall) inputRecord() *audit.Input {
	if a.input != nil || !a.isInf {
		return a.input
	}
	h := sha256.New()
	for _, c := range a.sums {
		sum := <-c
		h.Write(sum[:])
	}
	return &audit.Input{SHA256: hex.EncodeToString(h.Sum(nil)), Parts: len(a.sums), Bytes: a.bytes}
}

func inferParts(r *pb.InferRequest) [][]byte {
	switch {
	case r.GetDicom() != nil:
		return r.GetDicom().GetInstances()
	case r.GetVolume() != nil:
		return [][]byte{r.GetVolume().GetData()}
	}
	var parts [][]byte
	for _, t := range r.GetTensors().GetTensors() {
		parts = append(parts, t.GetData())
	}
	return parts
}

// kserveParts are a ModelInfer request's inputs: raw contents, or typed
// contents in protobuf's deterministic encoding. shm: some input lies in
// shared memory, outside the request.
func kserveParts(r *kpb.ModelInferRequest) (parts [][]byte, shm bool) {
	if len(r.GetRawInputContents()) > 0 {
		return r.GetRawInputContents(), false
	}
	for _, in := range r.GetInputs() {
		if _, ok := in.GetParameters()["shared_memory_region"]; ok {
			return nil, true
		}
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(in.GetContents())
		parts = append(parts, b)
	}
	return parts, false
}

// finishAudit completes the record with the outcome and appends it, off
// the call's path.
func (s *Server) finishAudit(ctx context.Context, a *auditCall, resp any, err error, start time.Time) {
	if a == nil {
		return
	}
	a.rec.DurationMs = float64(time.Since(start).Microseconds()) / 1000
	a.rec.Code = status.Code(err).String()
	if err != nil {
		a.rec.Error = status.Convert(err).Message()
	}
	if p, ok := access.FromContext(ctx); ok {
		a.rec.Principal = p.Name
	}
	switch r := resp.(type) {
	case *pb.InferResponse:
		a.rec.Model, a.rec.Version = r.GetModel(), r.GetVersion()
		a.rec.StudyUID, a.rec.SeriesUID = r.GetStudyInstanceUid(), r.GetSeriesInstanceUid()
		doc := findings.FromResponse(r)
		a.rec.Result = &audit.Result{Findings: doc.Findings, Measurements: doc.Measurements, Triage: doc.Triage, Outputs: outputs(r)}
		a.rec.TimingsMs = &doc.TimingsMS
	case *kpb.ModelInferResponse:
		a.rec.Version = r.GetModelVersion()
		res := &audit.Result{}
		for _, o := range r.GetOutputs() {
			res.Outputs = append(res.Outputs, o.GetName())
		}
		a.rec.Result = res
	}
	s.opts.Audit.Go(func() {
		a.rec.Input = a.inputRecord()
		if err := s.opts.Audit.Append(a.rec); err != nil {
			s.sec.auditFailures.Inc()
			s.log.Error("audit record not written", "method", a.rec.Method, "error", err)
		}
	})
}

// outputs names what an Infer response returned besides its findings.
func outputs(r *pb.InferResponse) []string {
	var out []string
	for _, m := range r.GetMasks() {
		out = append(out, "mask:"+m.GetOutput())
	}
	for _, t := range r.GetTensors() {
		out = append(out, "tensor:"+t.GetName())
	}
	if len(r.GetDicomSr()) > 0 {
		out = append(out, "dicom_sr")
	}
	if len(r.GetDicomSeg()) > 0 {
		out = append(out, "dicom_seg")
	}
	return out
}

// auditedStream watches an InferStream call for its audit record: the
// header names the model, the instances are the input (hashed as they
// arrive), the one response is the result.
type auditedStream struct {
	grpc.ServerStream
	ctx  context.Context
	a    *auditCall
	resp any
}

func (s *auditedStream) Context() context.Context { return s.ctx }

func (s *auditedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if r, ok := m.(*pb.InferStreamRequest); ok && err == nil {
		s.a.isInf = true
		if h := r.GetHeader(); h != nil {
			s.a.rec.Model, s.a.rec.Version, s.a.rec.RequestID = h.GetModel(), h.GetVersion(), h.GetRequestId()
			s.a.add(inferParts(h)...)
		}
		s.a.add(r.GetInstances().GetInstances()...)
	}
	return err
}

func (s *auditedStream) SendMsg(m any) error {
	s.resp = m
	return s.ServerStream.SendMsg(m)
}
