package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/audit"
	"github.com/voxserve/voxserve/internal/testpki"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/internal/tlsfiles"
	"github.com/voxserve/voxserve/server"
)

// TestAgainstSecuredServer: tokens made by `voxctl token`, and TLS and
// mutual TLS flags, against a server with an access file.
func TestAgainstSecuredServer(t *testing.T) {
	dir := t.TempDir()
	var tokens = map[string]string{}
	entries := "principals:\n"
	for _, p := range []struct{ name, roles string }{{"router", "infer"}, {"mlops", "infer,admin"}} {
		out, _, err := runCLI("token", "--name", p.name, "--roles", p.roles, "--json")
		require.NoError(t, err)
		var tok struct {
			Token  string `json:"token"`
			SHA256 string `json:"token_sha256"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &tok))
		assert.Equal(t, access.HashToken(tok.Token), tok.SHA256)
		tokens[p.name] = tok.Token
		plain, _, err := runCLI("token", "--name", p.name, "--roles", p.roles)
		require.NoError(t, err)
		assert.Contains(t, plain, "entry for the access file's principals:\n  - name: "+p.name)
		entries += "  - name: " + p.name + "\n    token_sha256: " + tok.SHA256 + "\n    roles: [" + p.roles + "]\n"
	}
	entries += "  - name: worklist\n    client_cert_cn: worklist\n    roles: [infer]\n"
	accessFile := filepath.Join(dir, "access.yaml")
	require.NoError(t, os.WriteFile(accessFile, []byte(entries), 0o600))
	store, err := access.Open(accessFile, nil)
	require.NoError(t, err)
	pki := testpki.Write(t, "worklist")
	cfg, err := tlsfiles.Server(pki.ServerCert, pki.ServerKey, pki.CA, tls.VerifyClientCertIfGiven)
	require.NoError(t, err)
	addr := serveWith(t, testrepo.Write(t, testrepo.Affine()), server.Options{Access: store, TLS: cfg})

	tokenFile := filepath.Join(dir, "router.token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(tokens["router"]+"\n"), 0o600))
	out, code, err := runCLI("models", "--addr", addr, "--tls-ca", pki.CA, "--token-file", tokenFile)
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "affine")

	_, code, err = runCLI("models", "--addr", addr, "--tls-ca", pki.CA)
	assert.Equal(t, 1, code)
	assert.Contains(t, describe(err), "Unauthenticated")
	_, code, _ = runCLI("models", "--addr", addr, "--token-file", tokenFile)
	assert.Equal(t, 1, code, "plaintext to a TLS port")
	_, code, _ = runCLI("models", "--addr", addr, "--tls", "--token-file", tokenFile)
	assert.Equal(t, 1, code, "the test CA is not among the system's")

	_, code, err = runCLI("unload", "affine", "--addr", addr, "--tls-ca", pki.CA, "--token-file", tokenFile)
	assert.Equal(t, 1, code)
	assert.Contains(t, describe(err), "PermissionDenied: router holds [infer]")

	t.Setenv("VOXSERVE_TOKEN", tokens["mlops"])
	out, _, err = runCLI("unload", "affine", "--addr", addr, "--tls-ca", pki.CA)
	require.NoError(t, err)
	assert.Contains(t, out, "unloaded affine")
	t.Setenv("VOXSERVE_TOKEN", "")

	// Mutual TLS: the client certificate is the principal.
	cert := pki.Clients["worklist"]
	out, _, err = runCLI("models", "--addr", addr, "--tls-ca", pki.CA, "--tls-cert", cert[0], "--tls-key", cert[1], "--tls-server-name", "localhost")
	require.NoError(t, err)
	assert.Contains(t, out, "MODEL  VERSION", "listed, as the principal worklist (its certificate)")

	_, code, _ = runCLI("models", "--addr", addr, "--tls-ca", pki.CA, "--tls-cert", cert[0])
	assert.Equal(t, 1, code, "a certificate needs its key")

	// The same from the environment, as a container's health check would.
	t.Setenv("VOXSERVE_TLS_CA", pki.CA)
	t.Setenv("VOXSERVE_TLS_SERVER_NAME", "localhost")
	t.Setenv("VOXSERVE_TOKEN_FILE", tokenFile)
	out, _, err = runCLI("models", "--addr", addr)
	require.NoError(t, err)
	assert.Contains(t, out, "MODEL  VERSION")
}

func TestAuditVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(path)
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		require.NoError(t, l.Append(audit.Record{Method: "/voxserve.v1.Inference/Infer", Code: "OK", Model: "ich"}))
	}
	require.NoError(t, l.Close())
	out, code, err := runCLI("audit", "verify", path)
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "3 records, seq 1 to 3")
	assert.Contains(t, out, "chain intact")

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, bytes.Replace(b, []byte(`"model":"ich"`), []byte(`"model":"icx"`), 1), 0o600))
	_, code, err = runCLI("audit", "verify", path)
	assert.Equal(t, 1, code)
	assert.ErrorContains(t, err, "the chain is broken at line 1: its hash does not match")
	_, code, _ = runCLI("audit", "check", path)
	assert.Equal(t, 2, code)
}
