// Command voxbench measures a voxserve model under load: a closed-loop
// concurrency sweep reporting throughput and latency percentiles, written as
// CSV and JSON with the command and machine recorded.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/voxserve/voxserve/bench"
	"github.com/voxserve/voxserve/client"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/kernels"
	"github.com/voxserve/voxserve/phantom"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/server"
	"github.com/voxserve/voxserve/tensor"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("voxbench", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address host:port (empty: run the server in process on --model-repository)")
	repo := fs.String("model-repository", "models", "model repository for the in-process server")
	model := fs.String("model", "", "model name")
	input := fs.String("input", "", ".npy tensor to send (default: random data of the model's input shape, dynamic axes = --dim)")
	dim := fs.Int64("dim", 32, "size used for dynamic non-batch axes when generating input")
	conc := fs.String("concurrency", "1,2,4,8", "comma-separated concurrency levels")
	duration := fs.Duration("duration", 10*time.Second, "measured time per level")
	warmup := fs.Duration("warmup", 2*time.Second, "unmeasured time per level before measuring")
	maxReq := fs.Int("max-requests", 0, "stop a level after this many requests (0: no limit)")
	quiet := fs.Bool("quiet", false, "no progress display on the terminal")
	priority := fs.String("priority", "routine", "stat or routine")
	statRate := fs.Float64("stat-rate", 0, "also send STAT probe requests at this rate (per second) during each level and report their latency apart (concurrency 0 then measures them unloaded)")
	out := fs.String("out", "", "folder for results.json, results.csv and latency.png (default: print only)")
	rates := fs.String("rate", "", "comma-separated offered rates (requests/s): open-loop steps instead of the concurrency sweep")
	outputsFlag := fs.String("outputs", "", "outputs to ask for with --phantom (default findings,measurements): any of findings, measurements, mask, sr, seg")
	phantomMatrix := fs.Int("phantom-matrix", 0, "--phantom in-plane size (default: the generator's, 256 for CT)")
	phantomSlice := fs.Float64("phantom-slice-mm", 0, "--phantom slice thickness in mm (default: drawn by the generator)")
	phantomKind := fs.String("phantom", "", "send a whole phantom study as DICOM instead of a tensor: head-ct, chest-xr or abdomen-ct (seed 300000; voxserve protocol): the full pipeline under load")
	gpu := fs.String("gpu", "auto", "in-process server: preprocessing and mask labelling on the GPU (auto, on or off; a binary built with the cuda tag)")
	sharedMem := fs.Bool("shared-memory", false, "with --protocol kserve: pass the input and fixed-size outputs through a system shared memory region (Triton's extension; the server must run with --shared-memory, and on this host)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (the in-process server included) to this file, for go tool pprof")
	var sec client.Security
	sec.RegisterFlags(fs)
	protocol := fs.String("protocol", "voxserve", "voxserve (voxserve.v1.Inference) or kserve (KServe v2 ModelInfer, so the same sweep measures Triton or any KServe server)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "voxbench: "+format+"\n", args...)
		return code
	}
	if *model == "" {
		return fail(2, "--model is required")
	}
	var levels []int
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			return fail(2, "--concurrency: %q is not a non-negative integer", s)
		}
		levels = append(levels, n)
	}
	prio := pb.Priority_PRIORITY_ROUTINE
	if *priority == "stat" {
		prio = pb.Priority_PRIORITY_STAT
	} else if *priority != "routine" {
		return fail(2, "--priority must be stat or routine")
	}

	var conn *client.Conn
	var err error
	target := *addr
	if *addr != "" {
		conn, err = client.DialSecure(*addr, sec)
	} else {
		target = "in-process:" + *repo
		acc, closeAcc, _, aerr := kernels.ForPreprocessing(*gpu)
		if aerr != nil {
			return fail(1, "--gpu: %v", aerr)
		}
		defer func() { _ = closeAcc() }()
		conn, err = client.InProcessWith(*repo, []string{*model}, "", server.Options{SharedMemory: *sharedMem, Accelerator: acc})
	}
	if err != nil {
		return fail(1, "%v", err)
	}
	defer conn.Close()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fail(1, "--cpuprofile: %v", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail(1, "--cpuprofile: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *protocol != "voxserve" && *protocol != "kserve" {
		return fail(2, "--protocol must be voxserve or kserve")
	}
	var info *pb.ModelInfo
	if *protocol == "kserve" {
		info, err = kserveModelInfo(ctx, kpb.NewGRPCInferenceServiceClient(conn.ClientConn), *model)
	} else {
		info, err = conn.Inference.GetModel(ctx, &pb.GetModelRequest{Name: *model})
	}
	if err != nil {
		return fail(1, "%v", err)
	}
	var t *pb.Tensor
	var req *pb.InferRequest
	if *phantomKind != "" {
		if *protocol != "voxserve" {
			return fail(2, "--phantom sends DICOM: it needs --protocol voxserve")
		}
		study, err := phantomStudy(phantom.Kind(*phantomKind), *phantomMatrix, *phantomSlice)
		if err != nil {
			return fail(2, "--phantom: %v", err)
		}
		outs, err := parseOutputs(*outputsFlag)
		if err != nil {
			return fail(2, "--outputs: %v", err)
		}
		req = &pb.InferRequest{Model: *model, Priority: prio, Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: study}},
			Outputs: outs}
	} else {
		if t, err = makeInput(info, *input, *dim); err != nil {
			return fail(1, "%v", err)
		}
		req = &pb.InferRequest{Model: *model, Priority: prio,
			Input:   &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{Tensors: []*pb.Tensor{t}}},
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS}}
	}
	if *sharedMem && *protocol != "kserve" {
		return fail(2, "--shared-memory needs --protocol kserve")
	}
	stages := &bench.StageTimes{}
	call := inferCall(conn, req, stages)
	if *protocol == "kserve" {
		kc := kpb.NewGRPCInferenceServiceClient(conn.ClientConn)
		reqs := []*kpb.ModelInferRequest{kserveRequest(*model, t, prio == pb.Priority_PRIORITY_STAT)}
		if *sharedMem {
			slots := 64 // open loop: as many in flight as the server lets wait
			if *rates == "" {
				slots = slices.Max(levels)
			}
			region, err := shareTensors(ctx, kc, reqs[0], t.GetData(), max(slots, 1))
			if err != nil {
				return fail(1, "--shared-memory: %v", err)
			}
			defer region.close(context.Background(), kc)
			reqs = region.reqs
		}
		call = kserveCall(kc, reqs...)
	}
	rep := &bench.Report{Command: strings.Join(os.Args, " "), Target: target, Model: *model, StartedAt: time.Now().UTC(),
		Machine: map[string]string{"goos": runtime.GOOS, "goarch": runtime.GOARCH, "cpus": strconv.Itoa(runtime.NumCPU()),
			"onnxruntime": engine.RuntimeVersion(), "go": runtime.Version()}}
	cfg := bench.Config{Concurrency: levels, Duration: *duration, Warmup: *warmup, MaxRequests: *maxReq, Stages: stages,
		Progress: func(i, n, c int) { fmt.Fprintf(os.Stderr, "[%d/%d] concurrency %d ...\n", i, n, c) }}
	// The server's statistics give each step's mean batch size (KServe
	// ModelStatistics; Triton serves it too).
	ks := kpb.NewGRPCInferenceServiceClient(conn.ClientConn)
	// KServe responses carry no server times: the queue and compute split
	// of a step comes from the statistics before and after it.
	cfg.Times = func(ctx context.Context) (bench.ServerTimes, error) {
		st, err := ks.ModelStatistics(ctx, &kpb.ModelStatisticsRequest{Name: *model})
		if err != nil {
			return bench.ServerTimes{}, err
		}
		var t bench.ServerTimes
		for _, m := range st.GetModelStats() {
			is := m.GetInferenceStats()
			t.Requests += int64(is.GetSuccess().GetCount())
			t.Queue += time.Duration(is.GetQueue().GetNs())
			t.Compute += time.Duration(is.GetComputeInput().GetNs() + is.GetComputeInfer().GetNs() + is.GetComputeOutput().GetNs())
		}
		return t, nil
	}
	cfg.Batches = func(ctx context.Context) (int64, int64, error) {
		st, err := ks.ModelStatistics(ctx, &kpb.ModelStatisticsRequest{Name: *model})
		if err != nil {
			return 0, 0, err
		}
		var inf, exe int64
		for _, m := range st.GetModelStats() {
			inf += int64(m.GetInferenceCount())
			exe += int64(m.GetExecutionCount())
		}
		return inf, exe, nil
	}
	if *statRate > 0 {
		stat := proto.Clone(req).(*pb.InferRequest)
		stat.Priority = pb.Priority_PRIORITY_STAT
		cfg.ProbeRate = *statRate
		cfg.Probe = inferCall(conn, stat, nil) // probes' steps are not the load's
		if *protocol == "kserve" {
			cfg.Probe = kserveCall(kpb.NewGRPCInferenceServiceClient(conn.ClientConn), kserveRequest(*model, t, true))
		}
	}
	// On a terminal, a progress bar redrawn in place; in logs, a line per step.
	unit := "concurrency"
	if *rates != "" {
		unit = "rate"
	}
	stopBar := func() {}
	if isTerminal(os.Stderr) && !*quiet {
		cfg.Progress = nil
		cfg.Live = &bench.Live{}
		stopBar = progressBar(cfg.Live, unit)
	}
	if *rates != "" {
		var rs []float64
		for _, f := range strings.Split(*rates, ",") {
			r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil || r <= 0 {
				return fail(2, "--rate: %q is not a positive number", f)
			}
			rs = append(rs, r)
		}
		rep.Steps, err = bench.SweepRates(ctx, cfg, rs, call)
	} else {
		rep.Steps, err = bench.Sweep(ctx, cfg, call)
	}
	stopBar()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fail(1, "%v", err)
	}
	fmt.Printf("%-12s %9s %7s %11s %9s %9s %9s %9s %10s %11s %12s %6s\n", "load", "requests", "errors", "thrpt/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "queue ms", "compute ms", "overhead ms", "batch")
	for _, s := range rep.Steps {
		load := fmt.Sprintf("%d clients", s.Concurrency)
		if s.RateRPS > 0 {
			load = fmt.Sprintf("%g req/s", s.RateRPS)
		}
		fmt.Printf("%-12s %9d %7d %11.1f %9.2f %9.2f %9.2f %9.2f %10.2f %11.2f %12.2f %6.1f\n", load, s.Requests, s.Errors,
			s.ThroughputRPS, s.P50Ms, s.P90Ms, s.P95Ms, s.P99Ms, s.MeanQueueMs, s.MeanComputeMs, s.OverheadP50Ms, s.MeanBatchSize)
		if s.FirstError != "" {
			fmt.Printf("  first error: %s\n", s.FirstError)
		}
		if len(s.Stages) > 0 {
			parts := make([]string, len(s.Stages))
			for i, x := range s.Stages {
				parts[i] = fmt.Sprintf("%s %.2f", x.Name, x.MeanMs)
			}
			fmt.Printf("  steps, mean ms: %s\n", strings.Join(parts, ", "))
		}
		if p := s.Probe; p != nil {
			fmt.Printf("  STAT probes: %d requests, %d errors, p50 %.2f ms, p99 %.2f ms\n", p.Requests, p.Errors, p.P50Ms, p.P99Ms)
		}
	}
	if *out != "" {
		if err := writeReport(*out, rep); err != nil {
			return fail(1, "%v", err)
		}
		fmt.Fprintf(os.Stderr, "wrote results.json, results.csv and latency.png in %s\n", *out)
	}
	return 0
}

// inferCall sends req and reports the server's queue and inference times,
// and its steps' times to stages (nil: not kept).
func inferCall(conn *client.Conn, req *pb.InferRequest, stages *bench.StageTimes) bench.Call {
	return func(ctx context.Context) (time.Duration, time.Duration, error) {
		resp, err := conn.Inference.Infer(ctx, req)
		if err != nil {
			return 0, 0, err
		}
		tm := resp.GetTimings()
		for _, st := range tm.GetStages() {
			stages.Add(st.GetName(), float64(st.GetUs())/1000)
		}
		return time.Duration(tm.GetQueueUs()) * time.Microsecond, time.Duration(tm.GetInferenceUs()) * time.Microsecond, nil
	}
}

// phantomStudy is one phantom study's DICOM instances (seed 300000, a
// held-out seed, positive), the same for every run.
func phantomStudy(kind phantom.Kind, matrix int, sliceMM float64) ([][]byte, error) {
	positive := true
	c, err := phantom.Generate(kind, phantom.Options{Seed: 300000, Positive: &positive, Matrix: matrix, SliceThickness: sliceMM})
	if err != nil {
		return nil, err
	}
	return c.Series.Encode()
}

// kserveRequest sends t through KServe's ModelInfer (raw contents), STAT
// as priority level 1.
func kserveRequest(model string, t *pb.Tensor, stat bool) *kpb.ModelInferRequest {
	dt, _ := server.DTypeFromProto(t.GetDataType())
	req := &kpb.ModelInferRequest{ModelName: model,
		Inputs:           []*kpb.ModelInferRequest_InferInputTensor{{Name: t.GetName(), Datatype: server.KServeDatatype(dt), Shape: t.GetShape()}},
		RawInputContents: [][]byte{t.GetData()}}
	if stat {
		req.Parameters = map[string]*kpb.InferParameter{"priority": {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: 1}}}
	}
	return req
}

// kserveCall sends reqs in turn: one request, or one per shared memory
// slot, so that calls in flight write their outputs apart (shm.go).
func kserveCall(c kpb.GRPCInferenceServiceClient, reqs ...*kpb.ModelInferRequest) bench.Call {
	var next atomic.Int64
	return func(ctx context.Context) (time.Duration, time.Duration, error) {
		_, err := c.ModelInfer(ctx, reqs[next.Add(1)%int64(len(reqs))])
		return 0, 0, err // KServe responses carry no server times: cfg.Times gives them
	}
}

// kserveModelInfo reads a model's input from KServe's ModelMetadata, in the
// form makeInput takes: a leading -1 is the batch axis.
func kserveModelInfo(ctx context.Context, c kpb.GRPCInferenceServiceClient, model string) (*pb.ModelInfo, error) {
	md, err := c.ModelMetadata(ctx, &kpb.ModelMetadataRequest{Name: model})
	if err != nil {
		return nil, err
	}
	info := &pb.ModelInfo{Name: md.GetName()}
	for _, in := range md.GetInputs() {
		if in.GetDatatype() != "FP32" {
			return nil, fmt.Errorf("input %s is %s; give --input for non-FP32 models", in.GetName(), in.GetDatatype())
		}
		dims := in.GetShape()
		if len(dims) > 0 && dims[0] == -1 {
			info.MaxBatchSize = 1
		}
		info.Inputs = append(info.Inputs, &pb.TensorInfo{Name: in.GetName(), DataType: pb.DataType_DATA_TYPE_FLOAT32, Dims: dims})
	}
	return info, nil
}

func makeInput(info *pb.ModelInfo, path string, dim int64) (*pb.Tensor, error) {
	if len(info.GetInputs()) != 1 {
		return nil, fmt.Errorf("model %s has %d inputs; voxbench drives single-input models", info.GetName(), len(info.GetInputs()))
	}
	in := info.GetInputs()[0]
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		t, err := tensor.ReadNpy(f, server.DefaultMaxMessageBytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &pb.Tensor{Name: in.GetName(), DataType: server.DTypeToProto(t.DType), Shape: t.Shape, Data: t.Data}, nil
	}
	dt, ok := server.DTypeFromProto(in.GetDataType())
	if !ok || dt != tensor.Float32 {
		return nil, fmt.Errorf("input %s is %v; give --input for non-float32 models", in.GetName(), in.GetDataType())
	}
	shape := make([]int64, len(in.GetDims()))
	for i, d := range in.GetDims() {
		switch {
		case d > 0:
			shape[i] = d
		case i == 0 && info.GetMaxBatchSize() > 0:
			shape[i] = 1
		default:
			shape[i] = dim
		}
	}
	n, err := tensor.NumElements(shape)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())*40 + 40
	}
	t := tensor.FromFloat32(in.GetName(), shape, v)
	return &pb.Tensor{Name: t.Name, DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: t.Shape, Data: t.Data}, nil
}

func writeReport(dir string, rep *bench.Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, write := range map[string]func(*os.File) error{
		"results.json": func(f *os.File) error { return rep.WriteJSON(f) },
		"results.csv":  func(f *os.File) error { return rep.WriteCSV(f) },
		"latency.png":  func(f *os.File) error { return rep.WritePNG(f) },
	} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := write(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressBar redraws live's line on stderr five times a second until the
// returned stop is called, which leaves the last state on its own line.
func progressBar(live *bench.Live, unit string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			fmt.Fprintf(os.Stderr, "\r\033[K%s", live.Line(unit, 24))
			select {
			case <-t.C:
			case <-done:
				fmt.Fprintln(os.Stderr)
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}

// parseOutputs reads --outputs; empty means findings and measurements.
func parseOutputs(list string) ([]pb.OutputKind, error) {
	if list == "" {
		return []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MEASUREMENTS}, nil
	}
	kinds := map[string]pb.OutputKind{"findings": pb.OutputKind_OUTPUT_KIND_FINDINGS, "measurements": pb.OutputKind_OUTPUT_KIND_MEASUREMENTS,
		"mask": pb.OutputKind_OUTPUT_KIND_MASK, "sr": pb.OutputKind_OUTPUT_KIND_DICOM_SR, "seg": pb.OutputKind_OUTPUT_KIND_DICOM_SEG}
	var out []pb.OutputKind
	for _, f := range strings.Split(list, ",") {
		k, ok := kinds[strings.TrimSpace(f)]
		if !ok {
			return nil, fmt.Errorf("%q is not one of findings, measurements, mask, sr, seg", f)
		}
		out = append(out, k)
	}
	return out, nil
}
