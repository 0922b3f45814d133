package server

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/internal/testrepo"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// BenchmarkOverhead512 measures the server's own cost on a gRPC round trip
// over loopback TCP: a 512x512 float32 image (1 MiB) through a model that
// does almost nothing (y = 2x + 1), reported as the p50 of round trip
// minus the server's queue and compute time (PRODUCT.md section 5: under
// 0.3 ms), beside the p50 round trip itself.
func BenchmarkOverhead512(b *testing.B) {
	yaml := strings.NewReplacer("dims: [2, 3]", "dims: [512, 512]", "max_queue_size: 4", "max_queue_size: 64").Replace(testrepo.AffineYAML)
	repo := testrepo.Write(b, testrepo.Bundle{Name: "affine", YAML: yaml, Versions: map[int64][]byte{
		1: onnxbuild.Affine([]int64{512, 512}, 2, 1).Marshal()}})
	h := start(b, repo, Options{})
	for _, tc := range []struct {
		name    string
		outputs []pb.OutputKind
	}{
		{"findings", []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS}}, // the image in, a small answer out
		{"tensors", []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_TENSORS}},   // 1 MiB each way
	} {
		b.Run(tc.name, func(b *testing.B) {
			req := tensorsReq("affine", f32Tensor("x", []int64{1, 512, 512}, make([]float32, 512*512)))
			req.Outputs = tc.outputs
			overhead(b, h, req)
		})
	}
}

func overhead(b *testing.B, h *harness, req *pb.InferRequest) {
	ctx := context.Background()
	for i := 0; i < 20; i++ { // warm-up
		if _, err := h.client.Infer(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	var over, rtt, inside []float64
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		resp, err := h.client.Infer(ctx, req)
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		tm := resp.GetTimings()
		rtt = append(rtt, float64(d.Microseconds()))
		over = append(over, float64(d.Microseconds()-tm.GetQueueUs()-tm.GetInferenceUs()))
		inside = append(inside, float64(tm.GetTotalUs()-tm.GetQueueUs()-tm.GetInferenceUs()))
	}
	b.StopTimer()
	b.ReportMetric(median(over), "overhead-p50-us")
	b.ReportMetric(median(rtt), "rtt-p50-us")
	b.ReportMetric(median(inside), "in-handler-p50-us") // of the overhead: Infer's own work outside the model
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}
