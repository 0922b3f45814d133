package dicom

import (
	"fmt"
	"sort"
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

// subjectTags are the attributes derived objects copy from their source.
// Specific Character Set comes along so that names decode as the
// source meant them.
var subjectTags = map[tag.Tag]bool{
	tag.SpecificCharacterSet:   true,
	tag.StudyDate:              true,
	tag.StudyTime:              true,
	tag.AccessionNumber:        true,
	tag.ReferringPhysicianName: true,
	tag.StudyDescription:       true,
	tag.PatientName:            true,
	tag.PatientID:              true,
	tag.IssuerOfPatientID:      true,
	tag.PatientBirthDate:       true,
	tag.PatientSex:             true,
	tag.PatientAge:             true,
	tag.PatientSize:            true,
	tag.PatientWeight:          true,
	tag.PatientIdentityRemoved: true,
	tag.DeidentificationMethod: true,
	tag.StudyID:                true,
}

// readSubject copies the subject attributes present in ds, in one pass over
// its top-level elements. Values that are not strings (a corrupt file) are
// skipped rather than failing the study.
func readSubject(ds *sd.Dataset) Subject {
	var s Subject
	for _, e := range ds.Elements {
		if !subjectTags[e.Tag] || e.Value == nil {
			continue
		}
		vals, ok := e.Value.GetValue().([]string)
		if !ok {
			continue
		}
		info, err := tag.Find(e.Tag)
		if err != nil {
			continue
		}
		s.attrs = append(s.attrs, Attr{Tag: e.Tag, VR: info.VRs[0], Values: append([]string(nil), vals...)})
	}
	return NewSubject(s.attrs)
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

// String redacts the contents.
func (s Subject) String() string {
	return fmt.Sprintf("[%d patient/study attributes, redacted]", len(s.attrs))
}

// GoString redacts the contents for %#v.
func (s Subject) GoString() string { return s.String() }

// NewSubject holds attrs (pseudonymized ones, say) as a Subject, in tag
// order.
func NewSubject(attrs []Attr) Subject {
	s := Subject{attrs: append([]Attr(nil), attrs...)}
	sort.Slice(s.attrs, func(i, j int) bool {
		a, b := s.attrs[i].Tag, s.attrs[j].Tag
		return a.Group < b.Group || (a.Group == b.Group && a.Element < b.Element)
	})
	return s
}
