package access

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

const example = `principals:
  - name: pacs-router
    token_sha256: %s
    roles: [infer]
  - name: mlops
    token_sha256: %s
    roles: [infer, admin]
  - name: worklist
    client_cert_cn: worklist.hospital.example
    roles: [infer]
  - name: prometheus
    token_sha256: %s
    roles: [metrics]
`

func policy(t *testing.T) *Policy {
	t.Helper()
	p, err := Parse([]byte(fmt.Sprintf(example, HashToken("router-token"), HashToken("mlops-token"), HashToken("prom-token"))))
	require.NoError(t, err)
	return p
}

func TestParseRefusesBadFiles(t *testing.T) {
	h := HashToken("x")
	for _, tc := range []struct{ name, file, want string }{
		{"empty", "principals: []\n", "none listed"},
		{"unknown field", "principals:\n  - name: a\n    token: abc\n    roles: [infer]\n", "field token not found"},
		{"bad name", "principals:\n  - name: a b\n    token_sha256: " + h + "\n    roles: [infer]\n", "principals[0].name"},
		{"unknown role", "principals:\n  - name: a\n    token_sha256: " + h + "\n    roles: [root]\n", `principals[0] (a).roles: "root"`},
		{"no roles", "principals:\n  - name: a\n    token_sha256: " + h + "\n", "roles: none listed"},
		{"no identity", "principals:\n  - name: a\n    roles: [infer]\n", "give token_sha256 or client_cert_cn"},
		{"both identities", "principals:\n  - name: a\n    token_sha256: " + h + "\n    client_cert_cn: x\n    roles: [infer]\n", "both given"},
		{"short hash", "principals:\n  - name: a\n    token_sha256: abcd\n    roles: [infer]\n", "64 hex digits"},
		{"raw token instead of hash", "principals:\n  - name: a\n    token_sha256: vxs_secret\n    roles: [infer]\n", "64 hex digits"},
		{"same name twice", "principals:\n  - name: a\n    token_sha256: " + h + "\n    roles: [infer]\n  - name: a\n    client_cert_cn: x\n    roles: [infer]\n", "listed twice"},
		{"same token twice", "principals:\n  - name: a\n    token_sha256: " + h + "\n    roles: [infer]\n  - name: b\n    token_sha256: " + h + "\n    roles: [admin]\n", "the same token as a"},
		{"same CN twice", "principals:\n  - name: a\n    client_cert_cn: x\n    roles: [infer]\n  - name: b\n    client_cert_cn: x\n    roles: [admin]\n", `"x" is a's already`},
		{"not YAML", "principals: [", "access file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.file))
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

func TestIdentify(t *testing.T) {
	p := policy(t)
	for _, tc := range []struct {
		name          string
		authorization []string
		cn            string
		want          string
		code          codes.Code
	}{
		{"token", []string{"Bearer router-token"}, "", "pacs-router", codes.OK},
		{"scheme is case-insensitive", []string{"bearer mlops-token"}, "", "mlops", codes.OK},
		{"certificate", nil, "worklist.hospital.example", "worklist", codes.OK},
		{"a token wins over a certificate", []string{"Bearer router-token"}, "worklist.hospital.example", "pacs-router", codes.OK},
		{"unknown token", []string{"Bearer guess"}, "", "", codes.Unauthenticated},
		{"not bearer", []string{"Basic dXNlcjpwYXNz"}, "", "", codes.Unauthenticated},
		{"empty bearer", []string{"Bearer "}, "", "", codes.Unauthenticated},
		{"unknown certificate", nil, "someone.else", "", codes.Unauthenticated},
		{"nothing", nil, "", "", codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, err := p.identify(tc.authorization, tc.cn)
			assert.Equal(t, tc.code, status.Code(err), "%v", err)
			assert.Equal(t, tc.want, pr.Name)
		})
	}
}

func TestNeed(t *testing.T) {
	for method, want := range map[string]Role{
		"/voxserve.v1.Inference/Infer":                               Infer,
		"/voxserve.v1.Inference/InferStream":                         Infer,
		"/voxserve.v1.Inference/ListModels":                          Infer,
		"/voxserve.v1.Inference/LoadModel":                           Admin,
		"/voxserve.v1.Inference/UnloadModel":                         Admin,
		"/inference.GRPCInferenceService/ModelInfer":                 Infer,
		"/inference.GRPCInferenceService/RepositoryModelLoad":        Admin,
		"/inference.GRPCInferenceService/RepositoryModelUnload":      Admin,
		"/inference.GRPCInferenceService/SystemSharedMemoryRegister": Infer,
		"/some.future.Service/Method":                                Infer,
		"/grpc.health.v1.Health/Check":                               "",
		"/inference.GRPCInferenceService/ServerLive":                 "",
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":  "",
	} {
		role, open := Need(method)
		assert.Equal(t, want, role, method)
		assert.Equal(t, want == "", open, method)
	}
}

func incoming(auth string, cn string) context.Context {
	ctx := context.Background()
	if auth != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", auth))
	}
	if cn != "" {
		cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		ctx = peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}})
	}
	return ctx
}

func TestCheck(t *testing.T) {
	s := static(policy(t))
	for _, tc := range []struct {
		name, method, auth, cn string
		code                   codes.Code
		msg                    string
	}{
		{"infer with an infer token", "/voxserve.v1.Inference/Infer", "Bearer router-token", "", codes.OK, ""},
		{"load with an infer token", "/voxserve.v1.Inference/LoadModel", "Bearer router-token", "", codes.PermissionDenied, "pacs-router holds [infer]; /voxserve.v1.Inference/LoadModel needs admin"},
		{"load with an admin token", "/voxserve.v1.Inference/LoadModel", "Bearer mlops-token", "", codes.OK, ""},
		{"infer with a metrics token", "/voxserve.v1.Inference/Infer", "Bearer prom-token", "", codes.PermissionDenied, "needs infer"},
		{"infer by certificate", "/inference.GRPCInferenceService/ModelInfer", "", "worklist.hospital.example", codes.OK, ""},
		{"infer with nothing", "/voxserve.v1.Inference/Infer", "", "", codes.Unauthenticated, "needs credentials"},
		{"health with nothing", "/grpc.health.v1.Health/Check", "", "", codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, err := s.Check(incoming(tc.auth, tc.cn), tc.method)
			assert.Equal(t, tc.code, status.Code(err))
			if tc.msg != "" {
				assert.Contains(t, status.Convert(err).Message(), tc.msg)
			}
			if err == nil {
				if _, open := Need(tc.method); !open {
					_, ok := FromContext(ctx)
					assert.True(t, ok, "the principal rides in the context")
				}
			}
			assert.NotContains(t, status.Convert(err).Message(), "token\"", "no token in errors")
		})
	}
	// No access file: everything is allowed, and no principal is named.
	var none *Store
	ctx, err := none.Check(incoming("", ""), "/voxserve.v1.Inference/LoadModel")
	require.NoError(t, err)
	_, ok := FromContext(ctx)
	assert.False(t, ok)
}

func TestHTTP(t *testing.T) {
	s := static(policy(t))
	h := s.HTTP(Metrics, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr, _ := FromContext(r.Context())
		_, _ = io.WriteString(w, "metrics for "+pr.Name)
	}))
	for _, tc := range []struct {
		auth string
		code int
	}{
		{"Bearer prom-token", 200},
		{"Bearer router-token", 403},
		{"Bearer nope", 401},
		{"", 401},
	} {
		r := httptest.NewRequest("GET", "/metrics", nil)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		assert.Equal(t, tc.code, w.Code, tc.auth)
		if tc.code == 401 {
			assert.Equal(t, `Bearer realm="voxserve"`, w.Header().Get("WWW-Authenticate"))
		}
		if tc.code == 200 {
			assert.Equal(t, "metrics for prometheus", w.Body.String())
		}
	}

	guarded := RequireClientCert(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	w := httptest.NewRecorder()
	guarded.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	assert.Equal(t, 401, w.Code, "no TLS, no certificate")
	r := httptest.NewRequest("GET", "/metrics", nil)
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{}}}}
	w = httptest.NewRecorder()
	guarded.ServeHTTP(w, r)
	assert.Equal(t, 200, w.Code)
}

// TestStoreReloads: a rotated token takes effect without a restart, and a
// broken file leaves the last good policy in force.
func TestStoreReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.yaml")
	write := func(token string) {
		require.NoError(t, os.WriteFile(path, []byte("principals:\n  - name: a\n    token_sha256: "+HashToken(token)+"\n    roles: [infer]\n"), 0o600))
	}
	write("old")
	s, err := Open(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, 10*time.Millisecond)

	known := func(tok string) bool { _, ok := s.Policy().ByToken(tok); return ok }
	assert.True(t, known("old"))
	time.Sleep(20 * time.Millisecond) // a different modification time
	write("new")
	require.Eventually(t, func() bool { return known("new") && !known("old") }, 5*time.Second, 10*time.Millisecond)

	time.Sleep(20 * time.Millisecond)
	require.NoError(t, os.WriteFile(path, []byte("principals: [broken"), 0o600))
	time.Sleep(100 * time.Millisecond)
	assert.True(t, known("new"), "the last good policy stays")

	_, err = Open(filepath.Join(t.TempDir(), "missing.yaml"), nil)
	assert.Error(t, err)
}

// FuzzParse: an access file never panics the parser, and what it accepts
// names every principal it lists.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fmt.Sprintf(example, HashToken("a"), HashToken("b"), HashToken("c"))))
	f.Add([]byte("principals:\n  - name: a\n    client_cert_cn: x\n    roles: [infer]\n"))
	f.Add([]byte("principals: [{name: a}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		assert.NotEmpty(t, len(p.tokens)+len(p.byCN))
		for _, pr := range append(p.tokens, mapValues(p.byCN)...) {
			assert.NotEmpty(t, pr.Roles)
		}
	})
}

func mapValues(m map[string]Principal) []Principal {
	var out []Principal
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
