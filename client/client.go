// Package client connects voxctl and voxbench to a voxserve server, over the
// network or in process (the same server code on an in-memory connection).
package client

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/voxserve/voxserve/engine"
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

// Dial connects to a server at addr (host:port), without TLS.
func Dial(addr string) (*Conn, error) {
	cc, err := grpc.NewClient(addr, append(transportOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()), callOptions())...)
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
