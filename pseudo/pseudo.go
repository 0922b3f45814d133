// Package pseudo pseudonymizes the DICOM objects voxserve returns (SR, SEG), for
// sites that send results on to research or to a third party: the patient
// becomes a pseudonym, the UIDs become other UIDs, and the rest of the
// patient's identity is left out.
//
// Pseudonyms are HMAC-SHA256 under the site's secret key, so they are
// stable (the same patient gets the same pseudonym in every object, and
// results from different days link up) and cannot be reversed or
// recomputed without the key. A UID u becomes "2.25." followed by the
// decimal value of the first 128 bits of HMAC(key, "uid\x00" + u), with
// the top bit cleared; a tool that pseudonymizes the source images with
// the same key and rule gets the same UIDs, so the objects still point at
// their (pseudonymized) source.
//
// What the objects keep of the patient follows DICOM PS3.15's Basic
// Application Level Confidentiality Profile with the Retain Patient
// Characteristics option: sex, age, size and weight stay; names, IDs,
// birth date, accession number, study date and time, study ID and
// description, and the referring physician go.
package pseudo

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"strings"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicomout"
)

// MinKeyBytes is the shortest key accepted: 256 bits.
const MinKeyBytes = 32

// Method is what the objects say was done to them (De-identification
// Method: values of at most 64 characters).
var Method = []string{"PS3.15 Basic Profile, Retain Patient Characteristics Option", "voxserve HMAC-SHA256 pseudonyms for the patient and UIDs"}

// Key pseudonymizes under one secret.
type Key struct{ k []byte }

// NewKey uses secret, which must hold at least MinKeyBytes bytes.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) < MinKeyBytes {
		return nil, fmt.Errorf("pseudonymization key: %d bytes; at least %d are needed (e.g. head -c 32 /dev/urandom | xxd -p -c 64)", len(secret), MinKeyBytes)
	}
	return &Key{k: bytes.Clone(secret)}, nil
}

// Load reads a key file: its bytes, without surrounding whitespace.
func Load(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pseudonymization key: %w", err)
	}
	return NewKey(bytes.TrimSpace(b))
}

func (k *Key) mac(kind, v string) []byte {
	h := hmac.New(sha256.New, k.k)
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(v))
	return h.Sum(nil)
}

// UID maps a UID to its pseudonym UID (empty stays empty).
func (k *Key) UID(uid string) string {
	if uid == "" {
		return ""
	}
	b := k.mac("uid", uid)[:16]
	b[0] &= 0x7f // a positive 127-bit value: at most 39 digits after "2.25."
	return "2.25." + new(big.Int).SetBytes(b).String()
}

// Patient is the pseudonym for a patient ID (qualified by its issuer).
func (k *Key) Patient(id, issuer string) string {
	return "VXS-" + strings.ToUpper(hex.EncodeToString(k.mac("patient", id+"\x00"+issuer)[:8]))
}

// retained are the subject attributes kept as they are: the Retain
// Patient Characteristics option.
var retained = map[tag.Tag]bool{
	tag.PatientSex: true, tag.PatientAge: true, tag.PatientSize: true, tag.PatientWeight: true,
}

// Source is src with its identity replaced: the UIDs it lends the derived
// objects, and the patient and study attributes.
func (k *Key) Source(src dicomout.Source) dicomout.Source {
	out := src
	out.StudyUID, out.SeriesUID, out.FrameOfReferenceUID = k.UID(src.StudyUID), k.UID(src.SeriesUID), k.UID(src.FrameOfReferenceUID)
	out.Instances = make([]dicom.SliceRef, len(src.Instances))
	for i, in := range src.Instances {
		out.Instances[i] = dicom.SliceRef{SOPInstanceUID: k.UID(in.SOPInstanceUID), SOPClassUID: in.SOPClassUID, Frame: in.Frame}
	}
	id, _ := src.Subject.Get(tag.PatientID)
	issuer, _ := src.Subject.Get(tag.IssuerOfPatientID)
	if id == "" {
		// No ID: the name stands in, so that the pseudonym is still stable.
		id, _ = src.Subject.Get(tag.PatientName)
	}
	p := k.Patient(id, issuer)
	attrs := []dicom.Attr{
		// As a person name: family name VXS, given name the digits.
		{Tag: tag.PatientName, VR: "PN", Values: []string{strings.Replace(p, "-", "^", 1)}},
		{Tag: tag.PatientID, VR: "LO", Values: []string{p}},
		{Tag: tag.PatientIdentityRemoved, VR: "CS", Values: []string{"YES"}},
		{Tag: tag.DeidentificationMethod, VR: "LO", Values: Method},
	}
	for _, a := range src.Subject.Attrs() {
		if retained[a.Tag] {
			attrs = append(attrs, a)
		}
	}
	out.Subject = dicom.NewSubject(attrs)
	return out
}
