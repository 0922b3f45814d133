package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/voxserve/voxserve/access"
	"github.com/voxserve/voxserve/audit"
)

// cmdToken makes a bearer token for a new principal: 256 random bits, and
// the access file entry that holds its hash. The token is printed once
// and stored nowhere.
func cmdToken(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	name := fs.String("name", "", "the principal's name, as logs will show it")
	roles := fs.String("roles", "infer", "comma-separated roles: infer, admin, metrics")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var rs []string
	for _, r := range strings.Split(*roles, ",") {
		rs = append(rs, strings.TrimSpace(r))
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	tok := "vxs_" + base64.RawURLEncoding.EncodeToString(b)
	entry := fmt.Sprintf("  - name: %s\n    token_sha256: %s\n    roles: [%s]\n", *name, access.HashToken(tok), strings.Join(rs, ", "))
	// The entry must parse as the server will parse it.
	if _, err := access.Parse([]byte("principals:\n" + entry)); err != nil {
		return usageErr("token: %v", err)
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"name": *name, "token": tok, "token_sha256": access.HashToken(tok), "roles": rs})
	}
	fmt.Fprintf(out, "token (give it to the client, e.g. as $VOXSERVE_TOKEN; it is not kept anywhere):\n%s\n\nentry for the access file's principals:\n%s", tok, entry)
	return nil
}

// cmdAuditVerify checks an audit log's chain and says how far it goes.
func cmdAuditVerify(path string, out io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return &exitError{1, err}
	}
	defer f.Close()
	s, err := audit.Verify(f)
	if err != nil {
		return &exitError{1, fmt.Errorf("%s: the chain is broken at %v", path, err)}
	}
	fmt.Fprintf(out, "%s: %d records, seq 1 to %d, %s to %s; chain intact; last hash %s\n", path, s.Records, s.LastSeq, s.First, s.Last, s.LastHash)
	if s.TornTail > 0 {
		fmt.Fprintf(out, "the last line is unfinished (%d bytes): a write cut short; voxserve closes it off when it next opens the log\n", s.TornTail)
	}
	return nil
}
