package dicom

import (
	"fmt"
	"strings"

	sd "github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Attr is one string-valued attribute copied verbatim from a source
// instance.
type Attr struct {
	Tag    tag.Tag
	VR     string
	Values []string
}

// Subject holds the Patient, General Study and Patient Study module
// attributes of a source instance, so that derived objects (SR, SEG) can
// carry them unchanged, as PS3.3 requires of objects in the same study.
//
// It is protected health information: it is kept out of every other struct
// and never logged; String and Format redact it so that a stray %v cannot
// leak it either.
type Subject struct {
	attrs []Attr
}

// subjectTags are the attributes derived objects copy from their source, in
// tag order. Specific Character Set comes along so that names decode as the
// source meant them.
var subjectTags = []tag.Tag{
	tag.SpecificCharacterSet,
	tag.StudyDate, tag.StudyTime, tag.AccessionNumber,
	tag.ReferringPhysicianName, tag.StudyDescription,
	tag.PatientName, tag.PatientID, tag.IssuerOfPatientID,
	tag.PatientBirthDate, tag.PatientSex,
	tag.PatientAge, tag.PatientSize, tag.PatientWeight,
	tag.PatientIdentityRemoved, tag.DeidentificationMethod,
	tag.StudyID,
}

// readSubject copies the subject attributes present in ds. Values that are
// not strings (a corrupt file) are skipped rather than failing the study.
func readSubject(ds *sd.Dataset) Subject {
	var s Subject
	for _, t := range subjectTags {
		e, err := ds.FindElementByTag(t)
		if err != nil || e.Value == nil {
			continue
		}
		vals, ok := e.Value.GetValue().([]string)
		if !ok {
			continue
		}
		info, err := tag.Find(t)
		if err != nil {
			continue
		}
		s.attrs = append(s.attrs, Attr{Tag: t, VR: info.VRs[0], Values: append([]string(nil), vals...)})
	}
	return s
}

// Attrs returns the copied attributes in tag order.
func (s Subject) Attrs() []Attr { return s.attrs }

// Get returns an attribute's value (multiple values joined by a backslash)
// and whether it was present.
func (s Subject) Get(t tag.Tag) (string, bool) {
	for _, a := range s.attrs {
		if a.Tag == t {
			return strings.Join(a.Values, `\`), true
		}
	}
	return "", false
}

// NewSubject builds a Subject, for tests and for callers that hold the
// attributes already (a raw-volume request with no DICOM source).
func NewSubject(attrs ...Attr) Subject { return Subject{attrs: attrs} }

// String redacts the contents.
func (s Subject) String() string {
	return fmt.Sprintf("[%d patient/study attributes, redacted]", len(s.attrs))
}

// GoString redacts the contents for %#v.
func (s Subject) GoString() string { return s.String() }
