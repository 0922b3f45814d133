// Package server exposes the engine over gRPC (voxserve.v1.Inference,
// grpc.health.v1, reflection) and HTTP (/healthz, /readyz), with graceful
// draining on shutdown.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/audit"
	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/preprocess"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/pseudo"
)

// DefaultMaxMessageBytes fits a 512x512x300 int16 CT volume (150 MiB) with
// room for its envelope; gRPC's own 4 MiB default breaks on real studies.
const DefaultMaxMessageBytes = 256 << 20

// ServiceName is the health-checked name of the inference service; each
// loaded model is also a health service under its own name.
const ServiceName = "voxserve.v1.Inference"

// Options configure a Server.
type Options struct {
	// MaxMessageBytes caps a received or sent gRPC message.
	MaxMessageBytes int
	// ShutdownGrace is how long in-flight requests may run after a shutdown
	// begins; after it they are cancelled.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	// DICOM controls series assembly (e.g. whether uneven spacing is an
	// error or a warning).
	DICOM dicom.Options
	// Accelerator runs preprocessing's fused pass (kernels.GPU); nil: the CPU.
	Accelerator preprocess.Accelerator
	// UIDRoot is the root of the UIDs of DICOM SR and SEG objects; empty
	// means 2.25 (UUID-derived UIDs, no registration needed).
	UIDRoot string
	// Access decides who may call what (nil: anyone who reaches the
	// port). Health checks and reflection stay open.
	Access *access.Store
	// TLS secures gRPC (nil: plaintext); with ClientCAs and
	// RequireAndVerifyClientCert, mutual TLS.
	TLS *tls.Config
	// HTTPTLS secures /healthz, /readyz and /metrics. With ClientCAs and no
	// access file, /metrics needs a verified client certificate.
	HTTPTLS *tls.Config
	// Pseudonymize, if set, replaces the patient's identity and the UIDs in
	// the SR and SEG objects returned (package pseudo).
	Pseudonymize *pseudo.Key
	// Audit, if set, records inference, model administration and refused
	// calls (package audit).
	Audit *audit.Log
	// SharedMemory turns on Triton's system shared memory extension on the
	// KServe endpoint: clients on this host may have the server map POSIX
	// shared memory objects (/dev/shm) they name. Off by default: any
	// client that reaches the port could otherwise map any object the
	// server's user can open.
	SharedMemory bool
}

// Transport sizes for large messages (clients should use the same; see
// client.Dial).
const (
	WindowBytes   = 16 << 20
	IOBufferBytes = 512 << 10
)

// Listen opens the gRPC listener for addr: host:port over TCP, or
// unix:///path for a Unix domain socket. A client on the same machine (an
// orchestrator beside the server) skips the TCP stack that way; a stale
// socket file from an earlier run is replaced.
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}

// Server is a voxserve instance over a registry.
type Server struct {
	reg    *engine.Registry
	opts   Options
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server

	prep *prometheus.HistogramVec // preprocessing time, shared with the inference service
	sec  *securityMetrics

	draining atomic.Bool
	// lost is why the GPU is lost to the process, once it is (deviceLost).
	lost     atomic.Pointer[string]
	inflight sync.WaitGroup
	mu       sync.Mutex // guards inflight.Add against the drain's Wait, and known
	known    []string   // model names given a health status
	calls    int        // in-flight calls, for tests and logs
}

// New builds a server; call Serve to start it.
func New(reg *engine.Registry, opts Options) *Server {
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{reg: reg, opts: opts, log: opts.Logger, health: health.NewServer(), prep: newPreprocessHistogram(), sec: newSecurityMetrics()}
	var creds []grpc.ServerOption
	if opts.TLS != nil {
		creds = append(creds, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	s.grpc = grpc.NewServer(append(creds,
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(opts.MaxMessageBytes),
		// Images and volumes are MiBs: HTTP/2 windows of 64 KiB would
		// make a client wait for window updates several times per
		// request, and small buffers cost a syscall per 32 KiB.
		grpc.InitialWindowSize(WindowBytes),
		grpc.InitialConnWindowSize(WindowBytes),
		grpc.WriteBufferSize(IOBufferBytes),
		grpc.ReadBufferSize(IOBufferBytes),
		// Requests' byte fields alias the received message (codec.go).
		grpc.ForceServerCodecV2(newCodec()),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	)...)
	pb.RegisterInferenceServer(s.grpc, &inference{reg: reg, maxStreamBytes: int64(opts.MaxMessageBytes) * 4, dicomOpts: opts.DICOM, acc: opts.Accelerator, prep: s.prep,
		uids: dicomout.UIDs{Root: opts.UIDRoot}, pseudo: opts.Pseudonymize})
	ks := &kserve{reg: reg, ready: s.Ready, live: func() bool { live, _ := s.Live(); return live }, version: Version}
	if opts.SharedMemory {
		ks.shm = newSharedMemory()
	}
	kpb.RegisterGRPCInferenceServiceServer(s.grpc, ks)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	reg.OnChange(s.updateHealth)
	reg.OnDeviceLost(func(model string, err error) { s.deviceLost("model "+model, err) })
	if w, ok := opts.Accelerator.(deviceWatch); ok {
		w.OnLost(func(err error) { s.deviceLost("the preprocessing kernels", err) })
	}
	s.updateHealth()
	return s
}

// deviceWatch is an accelerator that says when its device is lost to the
// process (kernels.GPU).
type deviceWatch interface {
	OnLost(func(error))
}

// deviceLost handles a GPU lost to the process (CUDA's sticky errors: an
// illegal address, a failed launch). Only a restart brings it back, so the
// server says so: health NOT_SERVING, /readyz 503, and /healthz and
// KServe's ServerLive fail, so that Kubernetes' liveness probe restarts
// it. Until then it serves what it still can (preprocessing falls back to
// the CPU; models on the CPU provider run).
func (s *Server) deviceLost(where string, err error) {
	why := fmt.Sprintf("the GPU was lost to this process (%s: %v); restart it", where, err)
	if !s.lost.CompareAndSwap(nil, &why) {
		return
	}
	s.log.Error("GPU lost; health is NOT_SERVING until the process restarts", "where", where, "error", err)
	s.mu.Lock()
	names := s.known
	s.mu.Unlock()
	for _, n := range append([]string{"", ServiceName}, names...) {
		s.health.SetServingStatus(n, healthpb.HealthCheckResponse_NOT_SERVING)
	}
}

// Live reports whether the process can serve at all: false once its GPU
// is lost (deviceLost), with why.
func (s *Server) Live() (bool, string) {
	if why := s.lost.Load(); why != nil {
		return false, *why
	}
	return true, ""
}

// GRPC exposes the underlying server, so that other services (the KServe v2
// protocol) can register on the same port before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Version is voxserve's version, reported by ServerMetadata.
var Version = "0.1.0-dev"

// healthExempt are the calls that answer while draining (liveness and
// readiness probes must see the drain, not an error).
var healthExempt = map[string]bool{
	"/grpc.health.v1.Health/Check":                true,
	"/grpc.health.v1.Health/Watch":                true,
	"/grpc.health.v1.Health/List":                 true,
	"/inference.GRPCInferenceService/ServerLive":  true,
	"/inference.GRPCInferenceService/ServerReady": true,
}

// enter registers an in-flight call, or refuses it while draining.
func (s *Server) enter(method string) (func(), error) {
	if healthExempt[method] {
		return func() {}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return nil, status.Error(codes.Unavailable, "server is shutting down; retry on another replica")
	}
	s.inflight.Add(1)
	s.calls++
	return func() {
		s.mu.Lock()
		s.calls--
		s.mu.Unlock()
		s.inflight.Done()
	}, nil
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	done, err := s.enter(info.FullMethod)
	if err != nil {
		return nil, err
	}
	defer done()
	start := time.Now()
	ctx, err = s.opts.Access.Check(ctx, info.FullMethod)
	s.countRefusal(err)
	a := s.beginAudit(ctx, info.FullMethod, req, err)
	var resp any
	if err == nil {
		resp, err = handler(ctx, req)
	}
	s.logCall(ctx, info.FullMethod, req, start, err)
	s.finishAudit(ctx, a, resp, err, start)
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	done, err := s.enter(info.FullMethod)
	if err != nil {
		return err
	}
	defer done()
	start := time.Now()
	ctx, err := s.opts.Access.Check(ss.Context(), info.FullMethod)
	s.countRefusal(err)
	a := s.beginAudit(ctx, info.FullMethod, nil, err)
	var resp any
	if err == nil {
		if a != nil && info.FullMethod == "/voxserve.v1.Inference/InferStream" {
			as := &auditedStream{ServerStream: ss, ctx: ctx, a: a}
			err = handler(srv, as)
			resp = as.resp
		} else {
			err = handler(srv, &authorizedStream{ServerStream: ss, ctx: ctx})
		}
	}
	s.logCall(ctx, info.FullMethod, nil, start, err)
	s.finishAudit(ctx, a, resp, err, start)
	return err
}

func (s *Server) countRefusal(err error) {
	if refused(err) {
		s.sec.refused.WithLabelValues(status.Code(err).String()).Inc()
	}
}

// authorizedStream carries the principal a stream was authorized as.
type authorizedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

// logCall writes one line per call. It logs the model, request id, code and
// duration, never request content: no patient data reaches the logs.
func (s *Server) logCall(ctx context.Context, method string, req any, start time.Time, err error) {
	if healthExempt[method] || method == "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" ||
		method == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" {
		return
	}
	attrs := []any{"method", method, "code", status.Code(err).String(), "duration_ms", float64(time.Since(start).Microseconds()) / 1000}
	if p, ok := access.FromContext(ctx); ok {
		attrs = append(attrs, "principal", p.Name)
	}
	if r, ok := req.(*pb.InferRequest); ok {
		attrs = append(attrs, "model", r.GetModel(), "version", r.GetVersion(), "request_id", r.GetRequestId())
	}
	if err != nil {
		attrs = append(attrs, "error", status.Convert(err).Message())
		level := slog.LevelWarn
		if c := status.Code(err); c == codes.Internal || c == codes.Unknown {
			level = slog.LevelError
		}
		s.log.Log(context.Background(), level, "rpc", attrs...)
		return
	}
	s.log.Debug("rpc", attrs...)
}

func (s *Server) updateHealth() {
	if s.draining.Load() || s.lost.Load() != nil {
		return
	}
	loaded := map[string]bool{}
	for _, n := range s.reg.Names() {
		loaded[n] = true
		s.health.SetServingStatus(n, healthpb.HealthCheckResponse_SERVING)
	}
	s.mu.Lock()
	for _, n := range s.known {
		if !loaded[n] {
			s.health.SetServingStatus(n, healthpb.HealthCheckResponse_NOT_SERVING)
		}
	}
	s.known = s.reg.Names()
	s.mu.Unlock()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if len(loaded) > 0 {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(ServiceName, st)
}

// Ready reports whether the server takes inference: not draining and at
// least one model loaded.
func (s *Server) Ready() bool {
	return !s.draining.Load() && s.lost.Load() == nil && len(s.reg.Names()) > 0
}

// HTTPHandler serves /healthz (the process is alive) and /readyz (it takes
// inference), for Kubernetes probes and load balancers, and /metrics
// (Prometheus).
func (s *Server) HTTPHandler() *http.ServeMux {
	mux := http.NewServeMux()
	var metrics http.Handler = promhttp.HandlerFor(metricsRegistry(s.reg, s.prep, s.sec), promhttp.HandlerOpts{})
	switch {
	case s.opts.Access != nil:
		metrics = s.opts.Access.HTTP(access.Metrics, metrics)
	case s.opts.HTTPTLS != nil && s.opts.HTTPTLS.ClientCAs != nil:
		metrics = access.RequireClientCert(metrics)
	}
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if live, why := s.Live(); !live {
			http.Error(w, why, http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Serve runs gRPC on grpcLis and HTTP on httpLis (which may be nil) until
// ctx is cancelled, then drains: new calls and queued requests get
// UNAVAILABLE, running batches get ShutdownGrace to finish, and the
// listeners close.
func (s *Server) Serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(grpcLis) }()
	var hs *http.Server
	if httpLis != nil {
		if s.opts.HTTPTLS != nil {
			httpLis = tls.NewListener(httpLis, s.opts.HTTPTLS)
		}
		hs = &http.Server{Handler: s.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.shutdown(hs)
	return err
}

func (s *Server) shutdown(hs *http.Server) {
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	s.health.Shutdown() // every service reports NOT_SERVING
	// Queued work is answered now, so its callers can go elsewhere; what is
	// running gets the grace period.
	queued := s.reg.Drain("the server is shutting down")
	s.log.Info("draining", "grace", s.opts.ShutdownGrace.String(), "queued_answered_unavailable", queued)
	drained := make(chan struct{})
	go func() { s.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(s.opts.ShutdownGrace):
		s.log.Warn("grace period over; cancelling in-flight requests")
	}
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		s.grpc.Stop()
	}
	if hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
	}
	s.log.Info("stopped")
}
