// Package client connects voxctl and voxbench to a voxserve server, over the
// network or in process (the same server code on an in-memory connection).
package client

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/internal/tlsfiles"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/server"
)

// Conn is a client connection and whatever must be torn down with it.
type Conn struct {
	*grpc.ClientConn
	Inference pb.InferenceClient
	closeFn   func()
}

// OnClose adds f to what Close does, after the connection and the
// in-process server are gone.
func (c *Conn) OnClose(f func()) {
	prev := c.closeFn
	c.closeFn = func() {
		if prev != nil {
			prev()
		}
		f()
	}
}

// Close tears the connection (and an in-process server) down.
func (c *Conn) Close() {
	_ = c.ClientConn.Close()
	if c.closeFn != nil {
		c.closeFn()
	}
}

// callOptions size messages, windows and buffers for images and volumes,
// as the server does.
func callOptions() grpc.DialOption {
	return grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(server.DefaultMaxMessageBytes),
		grpc.MaxCallSendMsgSize(server.DefaultMaxMessageBytes))
}

func transportOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(server.WindowBytes), grpc.WithInitialConnWindowSize(server.WindowBytes),
		grpc.WithWriteBufferSize(server.IOBufferBytes), grpc.WithReadBufferSize(server.IOBufferBytes),
	}
}

// Dial connects to a server at addr (host:port, or unix:///path), without
// TLS or credentials.
func Dial(addr string) (*Conn, error) {
	return DialSecure(addr, Security{})
}

// Security is how a client checks the server (TLS) and proves who it is
// (a client certificate, a bearer token).
type Security struct {
	// TLS turns TLS on; any of the files below implies it. Without
	// CAFile the system's roots are trusted.
	TLS                       bool
	CAFile, CertFile, KeyFile string
	ServerName                string
	// Token is sent as "authorization: Bearer <token>" on every call;
	// TokenFile, if set, holds it instead (so that it stays out of the
	// process list and shell history).
	Token, TokenFile string
}

// RegisterFlags adds the --tls-* and --token-file flags to fs; the token
// also comes from $VOXSERVE_TOKEN.
//
// Each flag's default comes from the environment ($VOXSERVE_TLS_CA,
// $VOXSERVE_TLS_CERT, $VOXSERVE_TLS_KEY, $VOXSERVE_TLS_SERVER_NAME,
// $VOXSERVE_TOKEN_FILE), so that a container's health check or a shell
// session can be set up once.
func (s *Security) RegisterFlags(fs *flag.FlagSet) {
	fs.BoolVar(&s.TLS, "tls", os.Getenv("VOXSERVE_TLS") == "1", "connect over TLS, trusting the system's CAs (implied by --tls-ca, --tls-cert; default $VOXSERVE_TLS=1)")
	fs.StringVar(&s.CAFile, "tls-ca", os.Getenv("VOXSERVE_TLS_CA"), "PEM CA certificates to check the server's certificate against (default $VOXSERVE_TLS_CA)")
	fs.StringVar(&s.CertFile, "tls-cert", os.Getenv("VOXSERVE_TLS_CERT"), "PEM client certificate, for mutual TLS (default $VOXSERVE_TLS_CERT)")
	fs.StringVar(&s.KeyFile, "tls-key", os.Getenv("VOXSERVE_TLS_KEY"), "PEM private key of --tls-cert (default $VOXSERVE_TLS_KEY)")
	fs.StringVar(&s.ServerName, "tls-server-name", os.Getenv("VOXSERVE_TLS_SERVER_NAME"), "name to check in the server's certificate (default $VOXSERVE_TLS_SERVER_NAME, else the host of --addr)")
	fs.StringVar(&s.TokenFile, "token-file", os.Getenv("VOXSERVE_TOKEN_FILE"), "file holding the bearer token (default $VOXSERVE_TOKEN_FILE; else the token is $VOXSERVE_TOKEN)")
	s.Token = os.Getenv("VOXSERVE_TOKEN")
}

func (s Security) dialOptions() ([]grpc.DialOption, error) {
	creds := insecure.NewCredentials()
	if s.TLS || s.CAFile != "" || s.CertFile != "" || s.KeyFile != "" {
		cfg, err := tlsfiles.Client(s.CAFile, s.CertFile, s.KeyFile, s.ServerName)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	tok := s.Token
	if s.TokenFile != "" {
		b, err := os.ReadFile(s.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(tok)))
	}
	return opts, nil
}

// bearer sends a token on every call. It does not insist on TLS: a Unix
// socket, or a mesh that encrypts between pods, is a fair place for one
// (voxserve warns when it takes tokens over plain TCP).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// DialSecure connects to a server at addr with TLS and credentials.
func DialSecure(addr string, sec Security) (*Conn, error) {
	opts, err := sec.dialOptions()
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(addr, append(append(transportOptions(), opts...), callOptions())...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	return &Conn{ClientConn: cc, Inference: pb.NewInferenceClient(cc)}, nil
}

// InProcess starts a server over the repository on an in-memory listener
// and connects to it. models limits what is loaded (nil: everything).
func InProcess(repo string, models []string, ortLib string, log *slog.Logger) (*Conn, error) {
	return InProcessWith(repo, models, ortLib, server.Options{Logger: log})
}

// InProcessWith is InProcess with the server's options (a preprocessing
// accelerator, say).
func InProcessWith(repo string, models []string, ortLib string, opts server.Options) (*Conn, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log := opts.Logger
	if err := engine.Init(ortLib); err != nil {
		return nil, err
	}
	reg := engine.NewRegistry(repo, log)
	if models == nil {
		if err := reg.LoadAll(); err != nil && len(reg.Names()) == 0 {
			return nil, err
		}
	} else {
		for _, m := range models {
			if _, err := reg.Load(m, nil); err != nil {
				return nil, err
			}
		}
	}
	lis := bufconn.Listen(1 << 20)
	srv := server.New(reg, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, nil); close(done) }()
	cc, err := grpc.NewClient("passthrough:///inprocess",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()), callOptions())
	if err != nil {
		cancel()
		return nil, err
	}
	return &Conn{ClientConn: cc, Inference: pb.NewInferenceClient(cc), closeFn: func() {
		cancel()
		<-done
		reg.Close()
	}}, nil
}
