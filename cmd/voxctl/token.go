package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/voxserve/voxserve/access"
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
