// Package tlsfiles builds TLS configurations from PEM files, for the server
// (its certificate reloaded when the files change, so that a rotated
// certificate takes effect without a restart) and for clients.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// Server serves certFile and keyFile. With clientCA, client certificates
// signed by it are verified: clientAuth says whether one is required
// (gRPC under mutual TLS) or only checked when sent (HTTP, where the
// kubelet's probes come without one).
func Server(certFile, keyFile, clientCA string, clientAuth tls.ClientAuthType) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("TLS needs both a certificate and a key")
	}
	kp := &keyPair{cert: certFile, key: keyFile}
	if err := kp.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: kp.get,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if clientCA != "" {
		pool, err := pool(clientCA)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = clientAuth
	}
	return cfg, nil
}

// Client trusts caFile (empty: the system's roots) and, with certFile and
// keyFile, presents that certificate (mutual TLS). serverName overrides
// the name checked in the server's certificate.
func Client(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		p, err := pool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = p
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("a client certificate needs both --tls-cert and --tls-key")
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

func pool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA certificates: %s holds no PEM certificate", file)
	}
	return p, nil
}

// keyPair is the server's certificate, reloaded at most once a second
// when either file's modification time changes. A pair that fails to load
// (a half-written rotation) leaves the previous one in use.
type keyPair struct {
	cert, key string

	mu      sync.Mutex
	current *tls.Certificate
	stamp   [2]time.Time
	checked time.Time
}

func (k *keyPair) load() error {
	stamp, err := k.stamps()
	if err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	k.current, k.stamp = &c, stamp
	return nil
}

func (k *keyPair) stamps() ([2]time.Time, error) {
	var s [2]time.Time
	for i, f := range []string{k.cert, k.key} {
		st, err := os.Stat(f)
		if err != nil {
			return s, fmt.Errorf("server certificate: %w", err)
		}
		s[i] = st.ModTime()
	}
	return s, nil
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.checked) >= time.Second {
		k.checked = time.Now()
		if s, err := k.stamps(); err == nil && s != k.stamp {
			_ = k.load() // on failure the previous pair stays
		}
	}
	return k.current, nil
}
