// Package access decides who may call what: principals, identified by a
// bearer token or by their TLS client certificate, hold roles, and each
// gRPC method and HTTP path needs one.
//
// The access file lists the principals:
//
//	principals:
//	  - name: pacs-router
//	    token_sha256: 3f1c...   # sha256 of the bearer token (voxctl token prints both)
//	    roles: [infer]
//	  - name: mlops
//	    token_sha256: 9ab2...
//	    roles: [infer, admin]
//	  - name: worklist
//	    client_cert_cn: worklist.hospital.example   # with --tls-client-ca
//	    roles: [infer]
//	  - name: prometheus
//	    token_sha256: 77de...
//	    roles: [metrics]
//
// It holds hashes, not tokens, so that reading it does not give a caller's
// credentials away.
package access

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Role is what a principal may do.
type Role string

const (
	// Infer: inference and reading models' metadata, statistics and
	// configuration.
	Infer Role = "infer"
	// Admin: loading and unloading models.
	Admin Role = "admin"
	// Metrics: scraping /metrics.
	Metrics Role = "metrics"
)

var roles = map[Role]bool{Infer: true, Admin: true, Metrics: true}

// Principal is a caller the access file names.
type Principal struct {
	Name  string
	Roles []Role
}

// Has reports whether p holds r.
func (p Principal) Has(r Role) bool {
	for _, h := range p.Roles {
		if h == r {
			return true
		}
	}
	return false
}

// Policy is a parsed access file.
type Policy struct {
	byToken [][sha256.Size]byte // parallel to tokenPrincipals
	tokens  []Principal
	byCN    map[string]Principal
}

type file struct {
	Principals []struct {
		Name         string   `yaml:"name"`
		TokenSHA256  string   `yaml:"token_sha256"`
		ClientCertCN string   `yaml:"client_cert_cn"`
		Roles        []string `yaml:"roles"`
	} `yaml:"principals"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// Parse reads an access file. An error names the principal and field.
func Parse(b []byte) (*Policy, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("access file: %w", err)
	}
	if len(f.Principals) == 0 {
		return nil, fmt.Errorf("access file: principals: none listed (an empty policy would refuse every call)")
	}
	p := &Policy{byCN: map[string]Principal{}}
	names := map[string]bool{}
	for i, e := range f.Principals {
		at := fmt.Sprintf("access file: principals[%d]", i)
		if !nameRE.MatchString(e.Name) {
			return nil, fmt.Errorf("%s.name: %q must be 1-64 letters, digits, '.', '_', '@' or '-'", at, e.Name)
		}
		at = fmt.Sprintf("access file: principals[%d] (%s)", i, e.Name)
		if names[e.Name] {
			return nil, fmt.Errorf("%s.name: listed twice", at)
		}
		names[e.Name] = true
		pr := Principal{Name: e.Name}
		for _, r := range e.Roles {
			if !roles[Role(r)] {
				return nil, fmt.Errorf("%s.roles: %q is not infer, admin or metrics", at, r)
			}
			pr.Roles = append(pr.Roles, Role(r))
		}
		if len(pr.Roles) == 0 {
			return nil, fmt.Errorf("%s.roles: none listed", at)
		}
		switch {
		case e.TokenSHA256 != "" && e.ClientCertCN != "":
			return nil, fmt.Errorf("%s: token_sha256 and client_cert_cn both given; list the two identities as two principals", at)
		case e.TokenSHA256 != "":
			h, err := hex.DecodeString(e.TokenSHA256)
			if err != nil || len(h) != sha256.Size {
				return nil, fmt.Errorf("%s.token_sha256: want 64 hex digits, the sha256 of the token (voxctl token prints it)", at)
			}
			for j, o := range p.byToken {
				if bytes.Equal(o[:], h) {
					return nil, fmt.Errorf("%s.token_sha256: the same token as %s", at, p.tokens[j].Name)
				}
			}
			p.byToken = append(p.byToken, [sha256.Size]byte(h))
			p.tokens = append(p.tokens, pr)
		case e.ClientCertCN != "":
			if o, ok := p.byCN[e.ClientCertCN]; ok {
				return nil, fmt.Errorf("%s.client_cert_cn: %q is %s's already", at, e.ClientCertCN, o.Name)
			}
			p.byCN[e.ClientCertCN] = pr
		default:
			return nil, fmt.Errorf("%s: give token_sha256 or client_cert_cn", at)
		}
	}
	return p, nil
}

// HashToken is what the access file holds for a token.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// ByToken finds the principal a bearer token belongs to. Every entry is
// compared, in constant time, so that timing says nothing about which.
func (p *Policy) ByToken(token string) (Principal, bool) {
	h := sha256.Sum256([]byte(token))
	found := -1
	for i, o := range p.byToken {
		if subtle.ConstantTimeCompare(o[:], h[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Principal{}, false
	}
	return p.tokens[found], true
}

// ByCertCN finds the principal a verified client certificate's subject
// common name belongs to.
func (p *Policy) ByCertCN(cn string) (Principal, bool) {
	pr, ok := p.byCN[cn]
	return pr, ok
}

// Need is what a gRPC method requires: open (no principal: health
// checks and reflection, which probes and grpcurl need) or a role.
func Need(method string) (role Role, open bool) {
	switch method {
	case "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List",
		"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
		"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo":
		return "", true
	case "/voxserve.v1.Inference/LoadModel", "/voxserve.v1.Inference/UnloadModel",
		"/inference.GRPCInferenceService/RepositoryModelLoad", "/inference.GRPCInferenceService/RepositoryModelUnload":
		return Admin, false
	}
	// Everything else, methods added later included, needs at least infer.
	return Infer, false
}

// bearer extracts the token from an authorization value.
func bearer(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}
