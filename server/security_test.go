package server

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/internal/testlog"
	"github.com/voxserve/voxserve/internal/testpki"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/internal/tlsfiles"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// secured is a server with TLS, mutual TLS on gRPC, and an access file.
type secured struct {
	*harness
	pki  testpki.PKI
	logs *testlog.Buffer
}

const (
	inferToken   = "vxs_infer-token"
	adminToken   = "vxs_admin-token"
	metricsToken = "vxs_metrics-token"
)

func startSecured(t *testing.T) secured {
	return startSecuredWith(t, testrepo.Write(t, testrepo.Affine()), Options{})
}

func startSecuredWith(t testing.TB, repo string, opts Options) secured {
	t.Helper()
	pki := testpki.Write(t, "worklist.hospital.example", "unknown.example")
	file := filepath.Join(t.TempDir(), "access.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`principals:
  - name: pacs-router
    token_sha256: `+access.HashToken(inferToken)+`
    roles: [infer]
  - name: mlops
    token_sha256: `+access.HashToken(adminToken)+`
    roles: [infer, admin]
  - name: prometheus
    token_sha256: `+access.HashToken(metricsToken)+`
    roles: [metrics]
  - name: worklist
    client_cert_cn: worklist.hospital.example
    roles: [infer]
`), 0o600))
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := access.Open(file, log)
	require.NoError(t, err)
	gtls, err := tlsfiles.Server(pki.ServerCert, pki.ServerKey, pki.CA, tls.RequireAndVerifyClientCert)
	require.NoError(t, err)
	htls, err := tlsfiles.Server(pki.ServerCert, pki.ServerKey, pki.CA, tls.VerifyClientCertIfGiven)
	require.NoError(t, err)
	opts.Logger, opts.Access, opts.TLS, opts.HTTPTLS = log, store, gtls, htls
	h := launch(t, repo, opts)
	return secured{harness: h, pki: pki, logs: logs}
}

// dial connects as the client certificate cn ("" for none).
func (s secured) dial(t testing.TB, cn string, extra ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	var cert, key string
	if cn != "" {
		cert, key = s.pki.Clients[cn][0], s.pki.Clients[cn][1]
	}
	cfg, err := tlsfiles.Client(s.pki.CA, cert, key, "")
	require.NoError(t, err)
	cc, err := grpc.NewClient(s.addr, append(extra, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func withToken(t *testing.T, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tok)
}

func TestSecuredServer(t *testing.T) {
	s := startSecured(t)
	// A client certificate the access file does not know still passes the
	// TLS handshake (the CA signed it); tokens then say who calls.
	cc := s.dial(t, "unknown.example")
	client := pb.NewInferenceClient(cc)
	ks := kpb.NewGRPCInferenceServiceClient(cc)
	infer := tensorsReq("affine", f32Tensor("x", []int64{1, 2, 3}, []float32{1, 2, 3, 4, 5, 6}))

	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"infer without a token", func() error { _, err := client.Infer(ctxT(t), infer); return err },
			codes.Unauthenticated, `the client certificate's subject CN "unknown.example" is not in the access file`},
		{"infer with an unknown token", func() error { _, err := client.Infer(withToken(t, "guess"), infer); return err },
			codes.Unauthenticated, "unknown bearer token"},
		{"infer with the infer token", func() error { _, err := client.Infer(withToken(t, inferToken), infer); return err },
			codes.OK, ""},
		{"KServe inference with the infer token", func() error {
			_, err := ks.ModelMetadata(withToken(t, inferToken), &kpb.ModelMetadataRequest{Name: "affine"})
			return err
		}, codes.OK, ""},
		{"unload with the infer token", func() error {
			_, err := client.UnloadModel(withToken(t, inferToken), &pb.UnloadModelRequest{Name: "affine"})
			return err
		}, codes.PermissionDenied, "pacs-router holds [infer]; /voxserve.v1.Inference/UnloadModel needs admin"},
		{"KServe unload with the infer token", func() error {
			_, err := ks.RepositoryModelUnload(withToken(t, inferToken), &kpb.RepositoryModelUnloadRequest{ModelName: "affine"})
			return err
		}, codes.PermissionDenied, "needs admin"},
		{"infer with the metrics token", func() error { _, err := client.Infer(withToken(t, metricsToken), infer); return err },
			codes.PermissionDenied, "prometheus holds [metrics]"},
		{"load with the admin token", func() error {
			_, err := client.LoadModel(withToken(t, adminToken), &pb.LoadModelRequest{Name: "affine"})
			return err
		}, codes.OK, ""},
		{"health with nothing", func() error {
			_, err := healthpb.NewHealthClient(cc).Check(ctxT(t), &healthpb.HealthCheckRequest{})
			return err
		}, codes.OK, ""},
		{"ServerLive with nothing", func() error { _, err := ks.ServerLive(ctxT(t), &kpb.ServerLiveRequest{}); return err },
			codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			assert.Equal(t, tc.code, status.Code(err), "%v", err)
			if tc.msg != "" {
				assert.Contains(t, status.Convert(err).Message(), tc.msg)
			}
		})
	}

	// Streams are checked the same way.
	st, err := client.InferStream(ctxT(t))
	require.NoError(t, err)
	_, err = st.CloseAndRecv()
	assert.Equal(t, codes.Unauthenticated, status.Code(err))

	// A known client certificate is a principal of its own.
	_, err = pb.NewInferenceClient(s.dial(t, "worklist.hospital.example")).Infer(ctxT(t), infer)
	assert.NoError(t, err)

	// The log names principals, never tokens.
	logs := s.logs.String()
	assert.Contains(t, logs, "principal=pacs-router")
	assert.Regexp(t, `level=WARN msg=rpc method=/voxserve.v1.Inference/UnloadModel code=PermissionDenied .*principal=pacs-router`, logs)
	assert.Contains(t, logs, "principal=worklist")
	for _, tok := range []string{inferToken, adminToken, metricsToken, "guess"} {
		assert.NotContains(t, logs, tok)
	}
}

func TestSecuredServerRefusesPlaintextAndStrangers(t *testing.T) {
	s := startSecured(t)
	infer := tensorsReq("affine", f32Tensor("x", []int64{1, 2, 3}, make([]float32, 6)))

	plain, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer plain.Close()
	_, err = pb.NewInferenceClient(plain).Infer(withToken(t, inferToken), infer)
	assert.Equal(t, codes.Unavailable, status.Code(err), "no plaintext on a TLS port")

	// Mutual TLS: no client certificate, no connection, token or not.
	_, err = pb.NewInferenceClient(s.dial(t, "")).Infer(withToken(t, inferToken), infer)
	assert.Equal(t, codes.Unavailable, status.Code(err))
}

func TestSecuredHTTP(t *testing.T) {
	s := startSecured(t)
	pool, err := tlsfiles.Client(s.pki.CA, "", "", "")
	require.NoError(t, err)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pool}}
	get := func(path, tok string) int {
		req, _ := http.NewRequest("GET", s.httpURL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		r, err := hc.Do(req)
		require.NoError(t, err)
		defer r.Body.Close()
		_, _ = io.Copy(io.Discard, r.Body)
		return r.StatusCode
	}
	// Probes come without credentials or a certificate.
	assert.Equal(t, 200, get("/healthz", ""))
	assert.Equal(t, 200, get("/readyz", ""))
	assert.Equal(t, 401, get("/metrics", ""))
	assert.Equal(t, 403, get("/metrics", inferToken))
	assert.Equal(t, 200, get("/metrics", metricsToken))

	// Refusals are counted, for alerts. (HTTP's are answered by the access
	// check itself; gRPC's go through the interceptors.)
	cc := s.dial(t, "unknown.example")
	_, err = pb.NewInferenceClient(cc).ListModels(ctxT(t), &pb.ListModelsRequest{})
	require.Error(t, err)
	_, err = pb.NewInferenceClient(cc).UnloadModel(withToken(t, inferToken), &pb.UnloadModelRequest{Name: "affine"})
	require.Error(t, err)
	req, _ := http.NewRequest("GET", s.httpURL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+metricsToken)
	r, err := hc.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	assert.Contains(t, string(body), `voxserve_refused_calls_total{code="Unauthenticated"} 1`)
	assert.Contains(t, string(body), `voxserve_refused_calls_total{code="PermissionDenied"} 1`)
	assert.Contains(t, string(body), `voxserve_audit_write_failures_total 0`)
}

// TestMutualTLSMetricsWithoutAccessFile: with a client CA and no access
// file, /metrics needs a verified client certificate, probes do not.
func TestMutualTLSMetricsWithoutAccessFile(t *testing.T) {
	pki := testpki.Write(t, "prometheus")
	htls, err := tlsfiles.Server(pki.ServerCert, pki.ServerKey, pki.CA, tls.VerifyClientCertIfGiven)
	require.NoError(t, err)
	h := launch(t, testrepo.Write(t, testrepo.Affine()), Options{HTTPTLS: htls})
	for _, tc := range []struct {
		path string
		cert bool
		code int
	}{
		{"/healthz", false, 200},
		{"/metrics", false, 401},
		{"/metrics", true, 200},
	} {
		var cert, key string
		if tc.cert {
			cert, key = pki.Clients["prometheus"][0], pki.Clients["prometheus"][1]
		}
		cfg, err := tlsfiles.Client(pki.CA, cert, key, "")
		require.NoError(t, err)
		r, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Get(h.httpURL + tc.path)
		require.NoError(t, err)
		r.Body.Close()
		assert.Equal(t, tc.code, r.StatusCode, "%s with a certificate: %v", tc.path, tc.cert)
	}
}
