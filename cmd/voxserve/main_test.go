package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/internal/testpki"
)

func TestSecurityFlags(t *testing.T) {
	pki := testpki.Write(t)
	file := filepath.Join(t.TempDir(), "access.yaml")
	require.NoError(t, os.WriteFile(file, []byte("principals:\n  - name: a\n    token_sha256: "+access.HashToken("t")+"\n    roles: [infer]\n"), 0o600))
	for _, tc := range []struct {
		name                       string
		cert, key, ca, file, addr  string
		err, warn                  string
		grpcTLS, mutual, hasAccess bool
	}{
		{name: "nothing", addr: "127.0.0.1:8001"},
		{name: "TLS", cert: pki.ServerCert, key: pki.ServerKey, addr: ":8001", grpcTLS: true},
		{name: "mutual TLS", cert: pki.ServerCert, key: pki.ServerKey, ca: pki.CA, addr: ":8001", grpcTLS: true, mutual: true},
		{name: "a certificate without its key", cert: pki.ServerCert, err: "--tls-cert/--tls-key"},
		{name: "a client CA without TLS", ca: pki.CA, err: "--tls-client-ca needs --tls-cert and --tls-key"},
		{name: "a missing access file", file: "/nonexistent.yaml", err: "--access-file"},
		{name: "tokens in clear text over TCP", file: file, addr: "0.0.0.0:8001", hasAccess: true, warn: "clear text"},
		{name: "tokens over a Unix socket", file: file, addr: "unix:///run/voxserve.sock", hasAccess: true},
		{name: "tokens over TLS", file: file, cert: pki.ServerCert, key: pki.ServerKey, addr: ":8001", hasAccess: true, grpcTLS: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			o, err := security(tc.cert, tc.key, tc.ca, tc.file, tc.addr, slog.New(slog.NewTextHandler(&logs, nil)))
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.grpcTLS, o.grpc != nil)
			assert.Equal(t, tc.grpcTLS, o.http != nil)
			assert.Equal(t, tc.hasAccess, o.access != nil)
			if tc.mutual {
				assert.NotNil(t, o.grpc.ClientCAs)
			}
			if tc.warn != "" {
				assert.Contains(t, logs.String(), tc.warn)
			} else {
				assert.Empty(t, logs.String())
			}
		})
	}
}
