package tlsfiles

import (
	"crypto/tls"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/internal/testpki"
)

// handshake serves one TLS connection with srv and dials it with cli.
func handshake(t *testing.T, srv, cli *tls.Config) error {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_ = c.(*tls.Conn).Handshake()
		_, _ = io.WriteString(c, "ok")
		c.Close()
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c) // a refused client certificate shows up on the first read in TLS 1.3
	if err == nil && string(b) != "ok" {
		t.Fatalf("read %q", b)
	}
	return err
}

func TestMutualTLS(t *testing.T) {
	p := testpki.Write(t, "worklist")
	cli := p.Clients["worklist"]
	srv, err := Server(p.ServerCert, p.ServerKey, p.CA, tls.RequireAndVerifyClientCert)
	require.NoError(t, err)

	withCert, err := Client(p.CA, cli[0], cli[1], "")
	require.NoError(t, err)
	assert.NoError(t, handshake(t, srv, withCert))

	noCert, err := Client(p.CA, "", "", "")
	require.NoError(t, err)
	assert.Error(t, handshake(t, srv, noCert), "mutual TLS refuses a client without a certificate")

	other := testpki.Write(t, "intruder")
	foreign, err := Client(p.CA, other.Clients["intruder"][0], other.Clients["intruder"][1], "")
	require.NoError(t, err)
	assert.Error(t, handshake(t, srv, foreign), "a certificate from another CA")

	wrongCA, err := Client(other.CA, "", "", "")
	require.NoError(t, err)
	assert.Error(t, handshake(t, srv, wrongCA), "the client checks the server")

	optional, err := Server(p.ServerCert, p.ServerKey, p.CA, tls.VerifyClientCertIfGiven)
	require.NoError(t, err)
	assert.NoError(t, handshake(t, optional, noCert), "HTTP lets probes in without a certificate")
}

// TestServerCertificateReloads: a certificate rotated in place is served
// without a restart.
func TestServerCertificateReloads(t *testing.T) {
	a, b := testpki.Write(t), testpki.Write(t)
	srv, err := Server(a.ServerCert, a.ServerKey, "", 0)
	require.NoError(t, err)
	trustsA, _ := Client(a.CA, "", "", "")
	trustsB, _ := Client(b.CA, "", "", "")
	require.NoError(t, handshake(t, srv, trustsA))
	require.Error(t, handshake(t, srv, trustsB))

	for _, f := range [][2]string{{b.ServerCert, a.ServerCert}, {b.ServerKey, a.ServerKey}} {
		data, err := os.ReadFile(f[0])
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(f[1], data, 0o600))
		later := time.Now().Add(time.Minute)
		require.NoError(t, os.Chtimes(f[1], later, later))
	}
	require.Eventually(t, func() bool { return handshake(t, srv, trustsB) == nil }, 5*time.Second, 200*time.Millisecond)
}

func TestConfigErrors(t *testing.T) {
	p := testpki.Write(t)
	_, err := Server(p.ServerCert, "", "", 0)
	assert.ErrorContains(t, err, "both a certificate and a key")
	_, err = Server(p.ServerCert, p.CA, "", 0)
	assert.ErrorContains(t, err, "server certificate")
	_, err = Server(p.ServerCert, p.ServerKey, p.ServerKey, tls.RequireAndVerifyClientCert)
	assert.ErrorContains(t, err, "no PEM certificate")
	_, err = Client("", p.ServerCert, "", "")
	assert.ErrorContains(t, err, "both --tls-cert and --tls-key")
	_, err = Client("/nonexistent", "", "", "")
	assert.Error(t, err)
}
