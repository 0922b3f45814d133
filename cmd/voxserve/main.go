// Command voxserve serves medical-imaging models over gRPC.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/kernels"
	"github.com/voxserve/voxserve/server"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("voxserve", flag.ContinueOnError)
	repo := fs.String("model-repository", "models", "model repository folder (<name>/bundle.yaml, <name>/<version>/model.onnx)")
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:8001", "gRPC listen address")
	httpAddr := fs.String("http-addr", "127.0.0.1:8002", "HTTP listen address for /healthz and /readyz (empty: off)")
	ortLib := fs.String("onnxruntime-lib", "", "path to libonnxruntime.so.1 (default: $"+engine.LibraryEnv+", then beside the binary, then .deps/)")
	maxMsg := fs.Int("max-message-bytes", server.DefaultMaxMessageBytes, "largest gRPC message accepted or sent")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "time in-flight requests get to finish on SIGTERM")
	sharedMemory := fs.Bool("shared-memory", false, "serve Triton's system shared memory extension on the KServe endpoint: local clients pass tensors through /dev/shm instead of the message (lets any client that reaches the port map shared memory objects this user can open)")
	uidRoot := fs.String("uid-root", dicomout.DefaultUIDRoot, "UID root for the DICOM SR and SEG objects voxserve writes (default 2.25: UUID-derived, no registration needed)")
	strictSpacing := fs.Bool("dicom-strict-spacing", false, "refuse DICOM series with missing slices or uneven spacing (default: serve them with a warning)")
	gpu := fs.String("gpu", "auto", "preprocessing on the GPU: auto (when one can run here), on (fail without one) or off")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "voxserve:", err)
		return 2
	}
	slog.SetDefault(log)

	if err := engine.Init(*ortLib); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	log.Info("onnx runtime loaded", "version", engine.RuntimeVersion())
	if st, err := os.Stat(*repo); err != nil || !st.IsDir() {
		log.Error("model repository is not a folder", "path", *repo)
		return 1
	}
	reg := engine.NewRegistry(*repo, log)
	if err := reg.LoadAll(); err != nil {
		log.Warn("some bundles were not loaded; serving the rest", "loaded", reg.Names())
	}

	if err := dicomout.CheckRoot(*uidRoot); err != nil {
		log.Error("cannot start", "flag", "--uid-root", "error", err)
		return 2
	}
	acc, closeAcc, why, err := kernels.ForPreprocessing(*gpu)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	defer closeAcc()
	if acc != nil {
		log.Info("preprocessing on the GPU", "device", acc.Name())
	} else {
		log.Info("preprocessing on the CPU", "reason", why)
	}
	srv := server.New(reg, server.Options{MaxMessageBytes: *maxMsg, ShutdownGrace: *grace, Logger: log,
		DICOM: dicom.Options{StrictSpacing: *strictSpacing}, Accelerator: acc, UIDRoot: *uidRoot, SharedMemory: *sharedMemory})
	gl, err := server.Listen(*grpcAddr)
	if err != nil {
		log.Error("cannot listen", "addr", *grpcAddr, "error", err)
		return 1
	}
	var hl net.Listener
	if *httpAddr != "" {
		if hl, err = net.Listen("tcp", *httpAddr); err != nil {
			log.Error("cannot listen", "addr", *httpAddr, "error", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("serving", "grpc", gl.Addr().String(), "http", *httpAddr, "models", reg.Names())
	fmt.Fprintf(os.Stderr, "\nvoxserve is ready. Try:\n  bin/voxctl models --addr %s\n  bin/voxctl health --addr %s\n  grpcurl -plaintext %s list\n\n",
		gl.Addr(), gl.Addr(), gl.Addr())
	if err := srv.Serve(ctx, gl, hl); err != nil {
		log.Error("server failed", "error", err)
		return 1
	}
	reg.Close()
	return 0
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}
