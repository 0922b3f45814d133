package pseudo

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/dicomout"
	"github.com/voxserve/voxserve/internal/dicomcheck"
	"github.com/voxserve/voxserve/phantom"
)

func key(t *testing.T, fill byte) *Key {
	t.Helper()
	k, err := NewKey([]byte(strings.Repeat(string(fill), MinKeyBytes)))
	require.NoError(t, err)
	return k
}

var uidRE = regexp.MustCompile(`^2\.25\.(0|[1-9][0-9]*)$`)

func TestUIDsAndPatients(t *testing.T) {
	a, b := key(t, 'a'), key(t, 'b')
	u := "1.2.826.0.1.3680043.8.498.12345"
	assert.Regexp(t, uidRE, a.UID(u))
	assert.LessOrEqual(t, len(a.UID(u)), 64, "a UID is at most 64 characters")
	assert.Equal(t, a.UID(u), a.UID(u), "stable under one key")
	assert.NotEqual(t, a.UID(u), b.UID(u), "another key, another UID")
	assert.NotEqual(t, a.UID(u), a.UID(u+"1"))
	assert.Empty(t, a.UID(""))
	for i := 0; i < 1000; i++ { // no component with a leading zero, ever
		assert.Regexp(t, uidRE, a.UID(strings.Repeat("1.", i%7)+"9"+strings.Repeat("0", i)))
	}
	assert.Regexp(t, `^VXS-[0-9A-F]{16}$`, a.Patient("MRN123", "HOSP"))
	assert.NotEqual(t, a.Patient("MRN123", "HOSP"), a.Patient("MRN123", "OTHER"), "the issuer qualifies the ID")
	assert.NotEqual(t, a.Patient("MRN123", ""), b.Patient("MRN123", ""))
	assert.NotEqual(t, a.UID("x"), a.Patient("x", ""), "kinds are kept apart")

	_, err := NewKey([]byte("short"))
	assert.ErrorContains(t, err, "at least 32")
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "k"), []byte(strings.Repeat("ab", 32)+"\n"), 0o600))
	k, err := Load(filepath.Join(dir, "k"))
	require.NoError(t, err)
	assert.Equal(t, k.UID(u), k.UID(u))
	_, err = Load(filepath.Join(dir, "missing"))
	assert.Error(t, err)
}

func TestSourceKeepsOnlyWhatTheProfileAllows(t *testing.T) {
	k := key(t, 'k')
	src := dicomout.Source{StudyUID: "1.2.3", SeriesUID: "1.2.3.4", FrameOfReferenceUID: "1.2.3.5",
		Instances: []dicom.SliceRef{{SOPInstanceUID: "1.2.3.4.1", SOPClassUID: "1.2.840.10008.5.1.4.1.1.2", Frame: 1}},
		Subject: dicom.NewSubject([]dicom.Attr{
			{Tag: tag.PatientName, VR: "PN", Values: []string{"Doe^Jane"}},
			{Tag: tag.PatientID, VR: "LO", Values: []string{"MRN123"}},
			{Tag: tag.IssuerOfPatientID, VR: "LO", Values: []string{"HOSP"}},
			{Tag: tag.PatientBirthDate, VR: "DA", Values: []string{"19700101"}},
			{Tag: tag.PatientSex, VR: "CS", Values: []string{"F"}},
			{Tag: tag.PatientAge, VR: "AS", Values: []string{"056Y"}},
			{Tag: tag.AccessionNumber, VR: "SH", Values: []string{"ACC9"}},
			{Tag: tag.StudyDate, VR: "DA", Values: []string{"20261204"}},
			{Tag: tag.ReferringPhysicianName, VR: "PN", Values: []string{"Who^Dr"}},
			{Tag: tag.StudyDescription, VR: "LO", Values: []string{"CT HEAD Jane Doe"}},
			{Tag: tag.SpecificCharacterSet, VR: "CS", Values: []string{"ISO_IR 192"}},
		}),
	}
	out := k.Source(src)
	assert.Equal(t, k.UID("1.2.3"), out.StudyUID)
	assert.Equal(t, k.UID("1.2.3.4"), out.SeriesUID)
	assert.Equal(t, k.UID("1.2.3.5"), out.FrameOfReferenceUID)
	assert.Equal(t, []dicom.SliceRef{{SOPInstanceUID: k.UID("1.2.3.4.1"), SOPClassUID: "1.2.840.10008.5.1.4.1.1.2", Frame: 1}}, out.Instances)
	assert.Equal(t, "1.2.3.4.1", src.Instances[0].SOPInstanceUID, "the source is not changed in place")

	got := map[tag.Tag]string{}
	for _, a := range out.Subject.Attrs() {
		got[a.Tag] = strings.Join(a.Values, `\`)
	}
	p := k.Patient("MRN123", "HOSP")
	assert.Equal(t, map[tag.Tag]string{
		tag.PatientName: strings.Replace(p, "-", "^", 1), tag.PatientID: p, tag.PatientSex: "F", tag.PatientAge: "056Y",
		tag.PatientIdentityRemoved: "YES", tag.DeidentificationMethod: strings.Join(Method, `\`),
	}, got)
	for _, v := range Method {
		assert.LessOrEqual(t, len(v), 64, "LO")
	}
}

// TestPseudonymizedObjects: an SR and a SEG written from a pseudonymized
// phantom study pass dciodvfy and hold none of the study's identity.
func TestPseudonymizedObjects(t *testing.T) {
	c, err := phantom.Generate(phantom.HeadCT, phantom.Options{Seed: 11, Matrix: 64, SliceThickness: 5})
	require.NoError(t, err)
	var inputs []dicom.Input
	var raw []byte
	for z := 0; z < c.Series.Slices; z++ {
		b, err := dicomwrite.Encode(c.Series.Slice(z))
		require.NoError(t, err)
		inputs = append(inputs, dicom.Input{Source: "IM" + string(rune('A'+z%26)), Data: b})
		raw = append(raw, b...)
	}
	all, _, err := dicom.ReadStudy(inputs, dicom.Options{})
	require.NoError(t, err)
	require.Len(t, all, 1)
	series := all[0]
	k := key(t, 's')
	src := k.Source(dicomout.SourceFromSeries(series))

	n := src.Dims[0] * src.Dims[1] * src.Dims[2]
	vox := make([]uint8, n)
	for i := n / 3; i < n/3+200; i++ {
		vox[i] = 1
	}
	alg := dicomout.Algorithm{Name: "ich", Version: "1", Software: "test", DeviceUID: dicomout.UIDs{}.Device("ich", "1")}
	opt := dicomout.Options{Now: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	seg, err := dicomout.SEG(src, []dicomout.LabelMap{{Voxels: vox, Segments: []dicomout.Segment{{Label: "hemorrhage",
		Category: dicomout.Code{Value: "91723000", Scheme: "SCT", Meaning: "Anatomical Structure"}, Type: dicomout.LocalCode("hemorrhage")}}}}, alg, opt)
	require.NoError(t, err)
	sr, err := dicomout.SR(src, dicomout.Report{Findings: []dicomout.Finding{{Label: "hemorrhage", Probability: 0.9, Threshold: 0.5, Present: true}}}, seg, alg, opt)
	require.NoError(t, err)

	dir := t.TempDir()
	orig := dicomout.SourceFromSeries(series)
	name, _ := orig.Subject.Get(tag.PatientName)
	id, _ := orig.Subject.Get(tag.PatientID)
	date, _ := orig.Subject.Get(tag.StudyDate)
	require.NotEmpty(t, name)
	require.NotEmpty(t, id)
	require.NotEmpty(t, date)
	secrets := []string{name, id, date, orig.StudyUID, orig.SeriesUID, orig.FrameOfReferenceUID}
	for _, in := range orig.Instances {
		secrets = append(secrets, in.SOPInstanceUID)
	}
	for what, b := range map[string][]byte{"seg.dcm": seg.Bytes, "sr.dcm": sr.Bytes} {
		p := filepath.Join(dir, what)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		errs, warns := dicomcheck.Dciodvfy(t, p)
		assert.Empty(t, errs, "dciodvfy errors in %s", what)
		assert.Empty(t, warns, "dciodvfy warnings in %s", what)
		for _, s := range secrets {
			assert.NotContains(t, string(b), s, "%s leaks an identifier", what)
		}
		assert.Contains(t, string(b), k.Patient(id, ""))
		assert.Contains(t, string(b), src.StudyUID)
	}
	for _, s := range secrets[:3] {
		assert.Contains(t, string(raw), s, "the phantom did carry it")
	}
}
