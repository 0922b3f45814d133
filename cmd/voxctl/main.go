// Command voxctl is voxserve's client and admin tool.
//
// Exit codes: 0 success, 1 the request failed, 2 bad usage.
package main

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/voxserve/voxserve/client"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/findings"
	"github.com/voxserve/voxserve/kernels"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/server"
	"github.com/voxserve/voxserve/tensor"
)

const usage = `voxctl: client and admin tool for voxserve

Usage:
  voxctl models    [--addr ADDR | --model-repository DIR] [--json]
  voxctl health    --addr ADDR [--model NAME] [--json]
  voxctl infer     --model NAME (--input FILE.npy | --volume FILE.npy [--spacing X,Y,Z] [--modality CT])
                   [--addr ADDR | --model-repository DIR] [--version V] [--priority stat|routine]
                   [--tensors] [--output-dir DIR] [--json]
                   [--sr FILE] [--seg FILE] [--seg-omit-empty] [--json FILE]
  voxctl load      NAME [--version V]... --addr ADDR
  voxctl unload    NAME [--version V] --addr ADDR
  voxctl inspect   [--json] [--strict-spacing] PATH...
  voxctl phantom   --kind head-ct|chest-xr|abdomen-ct --out DIR [--seed N] [--count K]
                   [--positive-fraction F] [--matrix N] [--slice-thickness MM]
  voxctl prepare   --bundle DIR --out DIR CASE_DIR...   (model inputs and labels as .npy, for training)
  voxctl eval      --model NAME [--out DIR] [--addr ADDR | --model-repository DIR] CASE_DIR...
  voxctl bundle validate DIR
  voxctl bundle import-monai SRC --out REPO [--name NAME] [--version V] [--modality CT]
  voxctl token     --name NAME --roles infer[,admin][,metrics] [--json]
  voxctl audit verify FILE   (check an audit log's hash chain)

Without --addr, models and infer run the server in process on --model-repository
(default: models). Against a server with TLS or an access file (docs/security.md):
--tls, --tls-ca FILE, --tls-cert FILE --tls-key FILE (mutual TLS), --tls-server-name,
--token-file FILE or $VOXSERVE_TOKEN. Exit codes: 0 ok, 1 the request failed, 2 bad usage.
`

// exitError carries an exit code up to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func usageErr(format string, args ...any) error {
	return &exitError{2, fmt.Errorf(format, args...)}
}

func main() {
	err := run(os.Args[1:], os.Stdout)
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "voxctl:", describe(err))
	}
	if code == 2 && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(os.Stderr, "\n", usage)
	}
	os.Exit(code)
}

// describe prints gRPC errors as "CODE: message".
func describe(err error) string {
	var ee *exitError
	if errors.As(err, &ee) {
		err = ee.err
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageErr("a command is required")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "models":
		return cmdModels(rest, out)
	case "health":
		return cmdHealth(rest, out)
	case "infer":
		return cmdInfer(rest, out)
	case "load":
		return cmdLoad(rest, out)
	case "unload":
		return cmdUnload(rest, out)
	case "inspect":
		return cmdInspect(rest, out)
	case "phantom":
		return cmdPhantom(rest, out)
	case "prepare":
		return cmdPrepare(rest, out)
	case "eval":
		return cmdEval(rest, out)
	case "token":
		return cmdToken(rest, out)
	case "audit":
		if len(rest) != 2 || rest[0] != "verify" {
			return usageErr("audit: the subcommand is `verify FILE`")
		}
		return cmdAuditVerify(rest[1], out)
	case "bundle":
		switch {
		case len(rest) > 0 && rest[0] == "validate":
			return cmdBundleValidate(rest[1:], out)
		case len(rest) > 0 && rest[0] == "import-monai":
			return cmdImportMONAI(rest[1:], out)
		}
		return usageErr("bundle: the subcommands are `validate DIR` and `import-monai SRC --out REPO`")
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	return usageErr("unknown command %q", cmd)
}

// common are the connection flags shared by commands.
type common struct {
	sec     client.Security
	addr    string
	repo    string
	ortLib  string
	gpu     string
	json    bool
	timeout time.Duration
}

func (c *common) register(fs *flag.FlagSet, inProcess bool) {
	fs.StringVar(&c.addr, "addr", os.Getenv("VOXSERVE_ADDR"), "server address host:port (default $VOXSERVE_ADDR)")
	c.sec.RegisterFlags(fs)
	if inProcess {
		fs.StringVar(&c.repo, "model-repository", "models", "model repository for in-process use (no --addr)")
		fs.StringVar(&c.ortLib, "onnxruntime-lib", "", "ONNX Runtime library for in-process use")
		fs.StringVar(&c.gpu, "gpu", "auto", "in-process preprocessing on the GPU: auto, on or off")
	}
	fs.BoolVar(&c.json, "json", false, "print JSON")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "request deadline")
}

func (c *common) connect(models []string) (*client.Conn, error) {
	if c.addr != "" {
		return client.DialSecure(c.addr, c.sec)
	}
	if c.repo == "" {
		return nil, usageErr("--addr is required")
	}
	acc, closeAcc, _, err := kernels.ForPreprocessing(c.gpu)
	if err != nil {
		return nil, &exitError{1, err}
	}
	conn, err := client.InProcessWith(c.repo, models, c.ortLib, server.Options{Accelerator: acc})
	if err == nil {
		conn.OnClose(func() { _ = closeAcc() })
	} else {
		_ = closeAcc()
	}
	if err != nil {
		return nil, &exitError{1, err}
	}
	return conn, nil
}

// call connects, runs f under the request deadline, and disconnects.
func (c *common) call(models []string, f func(ctx context.Context, conn *client.Conn) error) error {
	conn, err := c.connect(models)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	return f(ctx, conn)
}

func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	// Allow flags after positional arguments (voxctl load NAME --addr A).
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fs.PrintDefaults()
				return nil, &exitError{0, err}
			}
			return nil, usageErr("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func printJSON(out io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, string(b))
	return err
}

func cmdModels(args []string, out io.Writer) error {
	var c common
	fs := flag.NewFlagSet("models", flag.ContinueOnError)
	c.register(fs, true)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("models takes no arguments")
	}
	conn, err := c.connect(nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	resp, err := conn.Inference.ListModels(ctx, &pb.ListModelsRequest{})
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(out, resp)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tVERSION\tSTATE\tTASK\tMODALITY\tPROVIDER\tINPUTS")
	for _, m := range resp.GetModels() {
		var ins []string
		for _, in := range m.GetInputs() {
			ins = append(ins, fmt.Sprintf("%s %s%s", in.GetName(), dtypeName(in.GetDataType()), tensor.ShapeString(in.GetDims())))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.GetName(), m.GetVersion(),
			strings.TrimPrefix(m.GetState().String(), "STATE_"), m.GetTask(),
			orDash(strings.Join(m.GetModalities(), "/")), m.GetExecutionProvider(), strings.Join(ins, ", "))
	}
	return tw.Flush()
}

func dtypeName(d pb.DataType) string {
	if t, ok := server.DTypeFromProto(d); ok {
		return string(t)
	}
	return "?"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdHealth(args []string, out io.Writer) error {
	var c common
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	c.register(fs, false)
	model := fs.String("model", "", "check one model instead of the server")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if c.addr == "" {
		return usageErr("health: --addr is required")
	}
	conn, err := c.connect(nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	svc := server.ServiceName
	if *model != "" {
		svc = *model
	}
	resp, err := healthpb.NewHealthClient(conn.ClientConn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(out, resp)
	}
	fmt.Fprintf(out, "%s: %s\n", svc, resp.GetStatus())
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return &exitError{1, fmt.Errorf("%s is %s", svc, resp.GetStatus())}
	}
	return nil
}

func cmdInfer(args []string, out io.Writer) error {
	var c common
	fs := flag.NewFlagSet("infer", flag.ContinueOnError)
	c.register(fs, true)
	model := fs.String("model", "", "model name")
	version := fs.String("version", "", "model version (default: newest loaded)")
	input := fs.String("input", "", "a .npy tensor fed to the model's input as is")
	vol := fs.String("volume", "", "a .npy volume [slices, rows, columns] (or [rows, columns]) in patient space")
	spacing := fs.String("spacing", "", "volume voxel spacing in mm, x,y,z (default 1,1,1)")
	modality := fs.String("modality", "", "volume modality, e.g. CT")
	dicom := fs.String("dicom", "", "a folder of DICOM instances")
	priority := fs.String("priority", "routine", "stat or routine")
	tensors := fs.Bool("tensors", false, "also return the model's raw output tensors")
	outDir := fs.String("output-dir", "", "write output tensors and masks there as .npy")
	srPath := fs.String("sr", "", "write the DICOM SR (TID 1500 measurement report) to this file (--dicom input)")
	segPath := fs.String("seg", "", "write the DICOM SEG to this file (--dicom input)")
	omitEmpty := fs.Bool("seg-omit-empty", false, "leave SEG frames with no segmented pixel out")
	findingsPath := fs.String("findings", "", "write the JSON findings document (schema voxserve.findings/v1) to this file")
	repeat := fs.Int("repeat", 1, "send the request this many times, printing each one's timings; the last answer is printed in full (warm timings on one connection, or one in-process server)")
	if pos, err := parse(fs, jsonFileArgs(args)); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("infer: unexpected argument %q", pos[0])
	}
	if *model == "" {
		return usageErr("infer: --model is required")
	}
	if *repeat < 1 {
		return usageErr("infer: --repeat must be at least 1")
	}
	req := &pb.InferRequest{Model: *model, Version: *version, RequestId: fmt.Sprintf("voxctl-%d", time.Now().UnixNano())}
	switch *priority {
	case "stat":
		req.Priority = pb.Priority_PRIORITY_STAT
	case "routine":
		req.Priority = pb.Priority_PRIORITY_ROUTINE
	default:
		return usageErr("infer: --priority must be stat or routine")
	}
	n := 0
	for _, s := range []string{*input, *vol, *dicom} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return usageErr("infer: give exactly one of --input, --volume, --dicom")
	}
	switch {
	case *input != "":
		t, err := readNpy(*input)
		if err != nil {
			return err
		}
		req.Input = &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{Tensors: []*pb.Tensor{
			{DataType: server.DTypeToProto(t.DType), Shape: t.Shape, Data: t.Data}}}}
	case *vol != "":
		t, err := readNpy(*vol)
		if err != nil {
			return err
		}
		g := &pb.Geometry{}
		if *spacing != "" {
			sp, err := parseFloats(*spacing, 3)
			if err != nil {
				return usageErr("infer: --spacing: %v", err)
			}
			g.Spacing = sp
		}
		req.Input = &pb.InferRequest_Volume{Volume: &pb.Volume{DataType: server.DTypeToProto(t.DType), Dims: t.Shape,
			Geometry: g, Data: t.Data, Modality: *modality}}
	case *dicom != "":
		instances, skipped, err := readStudy(*dicom)
		if err != nil {
			return &exitError{1, err}
		}
		if skipped > 0 {
			fmt.Fprintf(os.Stderr, "voxctl: %d files in %s are not DICOM; not sent\n", skipped, *dicom)
		}
		req.Input = &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: instanceBytes(instances)}}
	}
	if *tensors || *srPath != "" || *segPath != "" {
		req.Outputs = []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MASK,
			pb.OutputKind_OUTPUT_KIND_MEASUREMENTS}
		if *tensors {
			req.Outputs = append(req.Outputs, pb.OutputKind_OUTPUT_KIND_TENSORS)
		}
		if *srPath != "" {
			req.Outputs = append(req.Outputs, pb.OutputKind_OUTPUT_KIND_DICOM_SR)
		}
		if *segPath != "" {
			req.Outputs = append(req.Outputs, pb.OutputKind_OUTPUT_KIND_DICOM_SEG)
		}
	}
	req.SegOmitEmptyFrames = *omitEmpty
	conn, err := c.connect([]string{*model})
	if err != nil {
		return err
	}
	defer conn.Close()
	var resp *pb.InferResponse
	for k := 1; k <= *repeat; k++ {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		resp, err = conn.Inference.Infer(ctx, req)
		cancel()
		if err != nil {
			return err
		}
		if k < *repeat {
			fmt.Fprintf(out, "run %d of %d\n", k, *repeat)
			printTimings(out, resp.GetTimings())
		}
	}
	if *outDir != "" {
		if err := writeOutputs(*outDir, resp); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		path string
		data func() ([]byte, error)
	}{
		{*srPath, func() ([]byte, error) { return resp.GetDicomSr(), nil }},
		{*segPath, func() ([]byte, error) { return resp.GetDicomSeg(), nil }},
		{*findingsPath, findings.FromResponse(resp).Marshal},
	} {
		if f.path == "" {
			continue
		}
		b, err := f.data()
		if err == nil {
			if err = os.MkdirAll(filepath.Dir(f.path), 0o755); err == nil {
				err = os.WriteFile(f.path, b, 0o644)
			}
		}
		if err != nil {
			return &exitError{1, fmt.Errorf("writing %s: %w", f.path, err)}
		}
	}
	if c.json {
		return printJSON(out, resp)
	}
	return printInfer(out, resp)
}

// jsonFileArgs lets infer take --json FILE, as the findings document's
// path, beside the plain --json that prints the response: a --json followed
// by a value that is not a flag becomes --findings FILE.
func jsonFileArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if (a == "--json" || a == "-json") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			out = append(out, "--findings", args[i+1])
			i++
			continue
		}
		if v, ok := strings.CutPrefix(a, "--json="); ok && v != "true" && v != "false" {
			out = append(out, "--findings", v)
			continue
		}
		out = append(out, a)
	}
	return out
}

func printInfer(out io.Writer, r *pb.InferResponse) error {
	fmt.Fprintf(out, "model %s version %s\n", r.GetModel(), r.GetVersion())
	switch r.GetTriage() {
	case pb.Triage_TRIAGE_URGENT:
		fmt.Fprintf(out, "triage: URGENT (%s)\n", strings.Join(r.GetTriageReasons(), "; "))
	case pb.Triage_TRIAGE_ROUTINE:
		fmt.Fprintln(out, "triage: routine")
	}
	if len(r.GetFindings()) > 0 {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nFINDING\tPROBABILITY\tTHRESHOLD\tDECISION\tCODE")
		for _, f := range r.GetFindings() {
			decision := "absent"
			if f.GetPresent() {
				decision = "PRESENT"
			}
			code := "-"
			if c := f.GetCode(); c != nil {
				code = fmt.Sprintf("%s %s (%s)", c.GetScheme(), c.GetValue(), c.GetMeaning())
			}
			fmt.Fprintf(tw, "%s\t%.4f\t%.2f\t%s\t%s\n", f.GetLabel(), f.GetProbability(), f.GetThreshold(), decision, code)
		}
		_ = tw.Flush()
	}
	for _, m := range r.GetMeasurements() {
		name := m.GetName()
		if !strings.Contains(name, m.GetLabel()) {
			name = m.GetLabel() + " " + name
		}
		fmt.Fprintf(out, "%s: %.3f %s\n", name, m.GetValue(), m.GetUnit())
	}
	for _, m := range r.GetMasks() {
		counts, err := maskCounts(m)
		if err != nil {
			return err
		}
		var parts []string
		for i, l := range m.GetLabels() {
			parts = append(parts, fmt.Sprintf("%s %d voxels", l, counts[i+1]))
		}
		fmt.Fprintf(out, "mask %s %v: %s\n", m.GetOutput(), m.GetDims(), strings.Join(parts, ", "))
	}
	for _, t := range r.GetTensors() {
		fmt.Fprintf(out, "tensor %s %s%s", t.GetName(), dtypeName(t.GetDataType()), tensor.ShapeString(t.GetShape()))
		if dt, ok := server.DTypeFromProto(t.GetDataType()); ok && dt == tensor.Float32 {
			v, _ := (&tensor.Tensor{DType: dt, Shape: t.GetShape(), Data: t.GetData()}).Float32s()
			if len(v) > 8 {
				fmt.Fprintf(out, " %v ...", v[:8])
			} else {
				fmt.Fprintf(out, " %v", v)
			}
		}
		fmt.Fprintln(out)
	}
	for _, w := range r.GetWarnings() {
		fmt.Fprintln(out, "warning:", w)
	}
	printTimings(out, r.GetTimings())
	return nil
}

// printTimings prints the server's phases and the steps within them.
func printTimings(out io.Writer, t *pb.Timings) {
	fmt.Fprintf(out, "timings: queue %.2f ms, preprocess %.2f ms, inference %.2f ms, postprocess %.2f ms, total %.2f ms\n",
		ms(t.GetQueueUs()), ms(t.GetPreprocessUs()), ms(t.GetInferenceUs()), ms(t.GetPostprocessUs()), ms(t.GetTotalUs()))
	if st := t.GetStages(); len(st) > 0 {
		parts := make([]string, len(st))
		for i, x := range st {
			parts[i] = fmt.Sprintf("%s %.2f ms", x.GetName(), ms(x.GetUs()))
		}
		fmt.Fprintf(out, "stages: %s\n", strings.Join(parts, ", "))
	}
}

func ms(us int64) float64 { return float64(us) / 1000 }

func inflate(z []byte) ([]byte, error) {
	r, err := zlib.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func maskCounts(m *pb.Mask) ([]int, error) {
	v, err := inflate(m.GetDataZlib())
	if err != nil {
		return nil, fmt.Errorf("mask %s: %w", m.GetOutput(), err)
	}
	counts := make([]int, 256)
	for _, x := range v {
		counts[x]++
	}
	return counts, nil
}

func writeOutputs(dir string, r *pb.InferResponse) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	write := func(name string, t *tensor.Tensor) error {
		f, err := os.Create(filepath.Join(dir, name+".npy"))
		if err != nil {
			return err
		}
		if err := tensor.WriteNpy(f, t); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	for _, t := range r.GetTensors() {
		dt, _ := server.DTypeFromProto(t.GetDataType())
		if err := write(t.GetName(), &tensor.Tensor{DType: dt, Shape: t.GetShape(), Data: t.GetData()}); err != nil {
			return err
		}
	}
	for _, m := range r.GetMasks() {
		v, err := inflate(m.GetDataZlib())
		if err != nil {
			return err
		}
		if err := write(m.GetOutput()+"_labels", &tensor.Tensor{DType: tensor.Uint8, Shape: m.GetDims(), Data: v}); err != nil {
			return err
		}
	}
	return nil
}

func readNpy(path string) (*tensor.Tensor, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &exitError{1, err}
	}
	defer f.Close()
	t, err := tensor.ReadNpy(f, server.DefaultMaxMessageBytes)
	if err != nil {
		return nil, &exitError{1, fmt.Errorf("%s: %w", path, err)}
	}
	return t, nil
}

func parseFloats(s string, n int) ([]float64, error) {
	parts := strings.Split(s, ",")
	if len(parts) != n {
		return nil, fmt.Errorf("want %d comma-separated numbers, got %q", n, s)
	}
	out := make([]float64, n)
	for i, p := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", p)
		}
		out[i] = v
	}
	return out, nil
}

// versionList collects repeated --version flags.
type versionList []string

func (v *versionList) String() string     { return strings.Join(*v, ",") }
func (v *versionList) Set(s string) error { *v = append(*v, s); return nil }

func cmdLoad(args []string, out io.Writer) error {
	var c common
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	c.register(fs, false)
	var versions versionList
	fs.Var(&versions, "version", "version to load (repeatable; default: the bundle's version policy)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || c.addr == "" {
		return usageErr("load: usage is `voxctl load NAME [--version V]... --addr ADDR`")
	}
	return c.call(nil, func(ctx context.Context, conn *client.Conn) error {
		resp, err := conn.Inference.LoadModel(ctx, &pb.LoadModelRequest{Name: pos[0], Versions: versions})
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(out, resp)
		}
		for _, m := range resp.GetLoaded() {
			fmt.Fprintf(out, "loaded %s version %s on %s\n", m.GetName(), m.GetVersion(), m.GetExecutionProvider())
		}
		return nil
	})
}

func cmdUnload(args []string, out io.Writer) error {
	var c common
	fs := flag.NewFlagSet("unload", flag.ContinueOnError)
	c.register(fs, false)
	version := fs.String("version", "", "version to unload (default: all)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || c.addr == "" {
		return usageErr("unload: usage is `voxctl unload NAME [--version V] --addr ADDR`")
	}
	return c.call(nil, func(ctx context.Context, conn *client.Conn) error {
		resp, err := conn.Inference.UnloadModel(ctx, &pb.UnloadModelRequest{Name: pos[0], Version: *version})
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(out, resp)
		}
		fmt.Fprintf(out, "unloaded %s versions %s\n", pos[0], strings.Join(resp.GetUnloadedVersions(), ", "))
		return nil
	})
}

func cmdBundleValidate(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bundle validate", flag.ContinueOnError)
	ortLib := fs.String("onnxruntime-lib", "", "ONNX Runtime library")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("bundle validate: usage is `voxctl bundle validate DIR`")
	}
	if err := engine.Init(*ortLib); err != nil {
		return err
	}
	b, verr := engine.Validate(pos[0])
	if *asJSON {
		rep := map[string]any{"bundle": pos[0], "valid": verr == nil}
		if b != nil {
			versions := append([]int64(nil), b.Versions...)
			sort.Slice(versions, func(i, j int) bool { return versions[i] < versions[j] })
			rep["name"], rep["versions"] = b.Spec.Name, versions
		}
		if verr != nil {
			rep["errors"] = strings.Split(verr.Error(), "\n")
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		if verr != nil {
			return &exitError{1, errors.New("bundle is invalid")}
		}
		return nil
	}
	if verr != nil {
		return verr
	}
	fmt.Fprintf(out, "%s: bundle %q is valid (versions %v)\n", pos[0], b.Spec.Name, b.Versions)
	return nil
}
