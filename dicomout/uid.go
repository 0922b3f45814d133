package dicomout

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math/big"
	"regexp"
	"strings"
)

// UIDs makes new DICOM UIDs under a root. The default root, 2.25, derives
// UIDs from 128-bit random or hashed values (PS3.5 B.2) and needs no
// registration; a site with its own root sets it with --uid-root.
type UIDs struct {
	Root string
}

// DefaultUIDRoot is used when no root is configured.
const DefaultUIDRoot = "2.25"

var uidRoot = regexp.MustCompile(`^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$`)

// CheckRoot validates a UID root: digits and dots, no leading zeros, short
// enough to leave room for 20 digits of its own (a UID is at most 64).
func CheckRoot(root string) error {
	if !uidRoot.MatchString(root) {
		return fmt.Errorf("UID root %q: must be dot-separated numbers without leading zeros", root)
	}
	if len(root) > 40 {
		return fmt.Errorf("UID root %q: %d characters, at most 40 leave room for unique suffixes", root, len(root))
	}
	return nil
}

func (u UIDs) root() string {
	if u.Root == "" {
		return DefaultUIDRoot
	}
	return strings.TrimSuffix(u.Root, ".")
}

// New returns a fresh random UID.
func (u UIDs) New() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return u.from(b, 4)
}

// Stable returns the same UID for the same parts: a device UID per bundle
// version, so that every result of one model version names one device.
func (u UIDs) Stable(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return u.from(h[:16], 8) // RFC 9562 version 8: a custom, here hash-derived, UUID
}

// Device is the stable Device UID of a bundle version.
func (u UIDs) Device(bundle, version string) string {
	return u.Stable("voxserve device", bundle, version)
}

// from makes a UID of 128 bits; under 2.25 they are made a UUID of the
// given version (PS3.5 B.2).
func (u UIDs) from(b []byte, version byte) string {
	root := u.root()
	if root == DefaultUIDRoot {
		b = append([]byte(nil), b...)
		b[6] = b[6]&0x0f | version<<4
		b[8] = b[8]&0x3f | 0x80 // the RFC 4122 variant
		return root + "." + new(big.Int).SetBytes(b).String()
	}
	suffix := new(big.Int).SetBytes(b).String()
	if max := 64 - len(root) - 1; len(suffix) > max {
		suffix = strings.TrimLeft(suffix[:max], "0")
		if suffix == "" {
			suffix = "1"
		}
	}
	return root + "." + suffix
}

// CheckUID validates a UID: the root syntax, at most 64 characters.
func CheckUID(uid string) error {
	if !uidRoot.MatchString(uid) || len(uid) > 64 {
		return fmt.Errorf("%q is not a valid UID", uid)
	}
	return nil
}
