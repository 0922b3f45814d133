// Command voxserve serves medical-imaging models over gRPC.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/audit"
	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/internal/tlsfiles"
	"github.com/voxserve/voxserve/kernels"
	"github.com/voxserve/voxserve/pseudo"
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
	tlsCert := fs.String("tls-cert", "", "PEM certificate (chain) for TLS on gRPC and HTTP; reloaded when the file changes")
	tlsKey := fs.String("tls-key", "", "PEM private key of --tls-cert")
	tlsClientCA := fs.String("tls-client-ca", "", "PEM CA certificates: mutual TLS, gRPC clients must present a certificate they signed (HTTP: /metrics only)")
	accessFile := fs.String("access-file", "", "principals (bearer token hashes or client certificate CNs) and their roles: infer, admin, metrics (docs/security.md); reloaded when it changes")
	pseudoKey := fs.String("pseudonymize-key", "", "file holding a secret of at least 32 bytes: the DICOM SR and SEG returned carry HMAC pseudonyms for the patient and UIDs, and none of the patient's other identity (docs/security.md)")
	pollSecs := fs.Int("repository-poll-secs", 0, "poll the model repository every N seconds and load bundles added or changed, unload those removed (Triton's poll mode); 0: off, use LoadModel/UnloadModel")
	auditLog := fs.String("audit-log", "", "append-only, hash-chained JSON lines: who asked which model version what (an input hash), the result and the timings; `voxctl audit verify FILE` checks it")
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
	// Flags first: a mistake here should not wait for the models to load.
	sec, err := security(*tlsCert, *tlsKey, *tlsClientCA, *accessFile, *grpcAddr, log)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 2
	}

	if err := engine.Init(*ortLib); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	log.Info("onnx runtime loaded", "version", engine.RuntimeVersion())
	if st, err := os.Stat(*repo); err != nil || !st.IsDir() {
		log.Error("model repository is not a folder", "path", *repo)
		return 1
	}
	var pseudonyms *pseudo.Key
	if *pseudoKey != "" {
		if pseudonyms, err = pseudo.Load(*pseudoKey); err != nil {
			log.Error("cannot start", "flag", "--pseudonymize-key", "error", err)
			return 2
		}
		log.Info("DICOM outputs are pseudonymized")
	}
	var auditor *audit.Log
	if *auditLog != "" {
		if auditor, err = audit.Open(*auditLog); err != nil {
			log.Error("cannot start", "flag", "--audit-log", "error", err)
			return 1
		}
		defer func() {
			if err := auditor.Close(); err != nil {
				log.Error("audit log not closed cleanly", "error", err)
			}
		}()
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
		DICOM: dicom.Options{StrictSpacing: *strictSpacing}, Accelerator: acc, UIDRoot: *uidRoot, SharedMemory: *sharedMemory,
		Access: sec.access, TLS: sec.grpc, HTTPTLS: sec.http, Audit: auditor, Pseudonymize: pseudonyms})
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
	if sec.access != nil {
		go sec.access.Watch(ctx, 10*time.Second)
	}
	if *pollSecs > 0 {
		go reg.Watch(ctx, time.Duration(*pollSecs)*time.Second)
		log.Info("polling the model repository", "every_secs", *pollSecs)
	}
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

type securityOptions struct {
	access     *access.Store
	grpc, http *tls.Config
}

// security reads the TLS and access flags. Tokens sent in clear text over
// a network can be read off it, so an access file without TLS on TCP is
// allowed (a proxy may terminate TLS) but warned about.
func security(cert, key, clientCA, accessFile, grpcAddr string, log *slog.Logger) (securityOptions, error) {
	var o securityOptions
	if cert != "" || key != "" {
		var err error
		auth := tls.RequireAndVerifyClientCert
		if o.grpc, err = tlsfiles.Server(cert, key, clientCA, auth); err != nil {
			return o, fmt.Errorf("--tls-cert/--tls-key/--tls-client-ca: %w", err)
		}
		// HTTP serves the kubelet's probes, which send no certificate.
		if o.http, err = tlsfiles.Server(cert, key, clientCA, tls.VerifyClientCertIfGiven); err != nil {
			return o, err
		}
	} else if clientCA != "" {
		return o, fmt.Errorf("--tls-client-ca needs --tls-cert and --tls-key")
	}
	if accessFile != "" {
		var err error
		if o.access, err = access.Open(accessFile, log); err != nil {
			return o, fmt.Errorf("--access-file: %w", err)
		}
		if o.grpc == nil && !strings.HasPrefix(grpcAddr, "unix:") {
			log.Warn("bearer tokens will cross the network in clear text: add --tls-cert and --tls-key, or terminate TLS in front of voxserve")
		}
	}
	return o, nil
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
