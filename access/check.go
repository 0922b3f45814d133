package access

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Store holds the policy in force, reloaded when its file changes (a
// Kubernetes Secret updated in place, a token rotated) without a restart.
// A file that no longer parses leaves the last good policy in force.
type Store struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[Policy]

	mu      sync.Mutex
	modTime time.Time
	size    int64
}

// Open reads the access file at path.
func Open(path string, log *slog.Logger) (*Store, error) {
	s := &Store{path: path, log: log}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// static is a Store over a policy with no file behind it (tests).
func static(p *Policy) *Store {
	s := &Store{}
	s.cur.Store(p)
	return s
}

// Policy is the policy in force.
func (s *Store) Policy() *Policy { return s.cur.Load() }

func (s *Store) reload() error {
	st, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("access file: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != nil && st.ModTime().Equal(s.modTime) && st.Size() == s.size {
		return nil
	}
	b, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("access file: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	s.cur.Store(p)
	s.modTime, s.size = st.ModTime(), st.Size()
	return nil
}

// Watch reloads the file when it changes, checking every interval, until
// ctx ends.
func (s *Store) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			before := s.Policy()
			if err := s.reload(); err != nil {
				s.log.Error("access file not reloaded; the previous policy stays in force", "error", err)
			} else if s.Policy() != before {
				s.log.Info("access file reloaded", "path", s.path)
			}
		}
	}
}

type principalKey struct{}

// FromContext is the principal a call was authorized as (false for an
// open call, or a server with no access file).
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// identify finds who is calling: a bearer token if one is sent, else a
// verified client certificate.
func (p *Policy) identify(authorization []string, cert string) (Principal, error) {
	if len(authorization) > 0 {
		tok, ok := bearer(authorization[0])
		if !ok {
			return Principal{}, status.Error(codes.Unauthenticated, "the authorization metadata is not 'Bearer <token>'")
		}
		pr, ok := p.ByToken(tok)
		if !ok {
			return Principal{}, status.Error(codes.Unauthenticated, "unknown bearer token")
		}
		return pr, nil
	}
	if cert != "" {
		pr, ok := p.ByCertCN(cert)
		if !ok {
			return Principal{}, status.Errorf(codes.Unauthenticated, "the client certificate's subject CN %q is not in the access file", cert)
		}
		return pr, nil
	}
	return Principal{}, status.Error(codes.Unauthenticated, "this call needs credentials: send 'authorization: Bearer <token>' metadata or a client certificate")
}

func authorize(pr Principal, role Role, what string) error {
	if pr.Has(role) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "%s holds %v; %s needs %s", pr.Name, pr.Roles, what, role)
}

// verifiedCN is the subject CN of a client certificate the TLS handshake
// verified against the client CA ("" if none).
func verifiedCN(chains [][]*x509.Certificate) string {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return ""
	}
	return chains[0][0].Subject.CommonName
}

// Check authorizes a gRPC call: a context carrying the principal it runs
// as, and an Unauthenticated or PermissionDenied status naming what was
// missing if it may not run. A nil Store (no access file) allows every
// call.
func (s *Store) Check(ctx context.Context, method string) (context.Context, error) {
	role, open := Need(method)
	if open || s == nil {
		return ctx, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	cn := ""
	if pe, ok := peer.FromContext(ctx); ok {
		if ti, ok := pe.AuthInfo.(credentials.TLSInfo); ok {
			cn = verifiedCN(ti.State.VerifiedChains)
		}
	}
	pr, err := s.Policy().identify(md.Get("authorization"), cn)
	if err != nil {
		return ctx, err
	}
	// The context names the principal even when refused, for the log.
	return context.WithValue(ctx, principalKey{}, pr), authorize(pr, role, method)
}

// HTTP guards an HTTP handler with role: 401 without credentials (or with
// unknown ones), 403 without the role.
func (s *Store) HTTP(role Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := ""
		if r.TLS != nil {
			cn = verifiedCN(r.TLS.VerifiedChains)
		}
		pr, err := s.Policy().identify(r.Header.Values("Authorization"), cn)
		if err == nil {
			err = authorize(pr, role, r.URL.Path)
		}
		if err != nil {
			code := http.StatusForbidden
			if status.Code(err) == codes.Unauthenticated {
				code = http.StatusUnauthorized
				w.Header().Set("WWW-Authenticate", `Bearer realm="voxserve"`)
			}
			http.Error(w, status.Convert(err).Message(), code)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, pr)))
	})
}

// RequireClientCert guards h with the TLS handshake alone: a client
// certificate verified against the client CA (mutual TLS without an
// access file).
func RequireClientCert(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "a client certificate is required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
