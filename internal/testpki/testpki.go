// Package testpki writes a throwaway certificate authority, a server
// certificate for localhost and client certificates, for tests of TLS and
// mutual TLS.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI names the PEM files written.
type PKI struct {
	Dir                   string
	CA                    string
	ServerCert, ServerKey string
	// Clients maps a client certificate's CN to its cert and key files.
	Clients map[string][2]string
}

// Write creates the files under a test's temporary folder.
func Write(t testing.TB, clientCNs ...string) PKI {
	t.Helper()
	dir := t.TempDir()
	p := PKI{Dir: dir, Clients: map[string][2]string{}}
	caKey := key(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "voxserve test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.CA = write(t, dir, "ca.pem", "CERTIFICATE", caDER)
	p.ServerCert, p.ServerKey = Issue(t, dir, ca, caKey, "server", "localhost", x509.ExtKeyUsageServerAuth, 2)
	for i, cn := range clientCNs {
		c, k := Issue(t, dir, ca, caKey, "client-"+cn, cn, x509.ExtKeyUsageClientAuth, int64(10+i))
		p.Clients[cn] = [2]string{c, k}
	}
	return p
}

// Issue signs a certificate for cn (a server certificate also covers
// 127.0.0.1 and ::1) and writes it and its key as NAME.pem, NAME-key.pem.
func Issue(t testing.TB, dir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name, cn string, usage x509.ExtKeyUsage, serial int64) (cert, keyFile string) {
	t.Helper()
	k := key(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{cn}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return write(t, dir, name+".pem", "CERTIFICATE", der), write(t, dir, name+"-key.pem", "EC PRIVATE KEY", kder)
}

func key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func write(t testing.TB, dir, name, typ string, der []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
