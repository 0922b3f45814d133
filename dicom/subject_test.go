package dicom

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
)

// The patient and study attributes are kept for derived objects, and no
// formatting of an instance or a series shows them.
func TestSubjectKeptAndRedacted(t *testing.T) {
	s := dicomwrite.Series{Rows: 4, Cols: 4, Slices: 2, Spacing: [3]float64{1, 1, 2}, Orientation: [6]float64{1, 0, 0, 0, 1, 0},
		Slope: 1, Modality: "CT", StudyUID: "1.2.3", SeriesUID: "1.2.3.4", PatientName: "DOE^JANE", PatientID: "MRN-991",
		StudyDate: "20250102", Value: func(i, j, k int) int32 { return 0 }}
	files, err := s.Encode()
	require.NoError(t, err)
	all, _, err := ReadStudy([]Input{{Source: "a", Data: files[0]}, {Source: "b", Data: files[1]}}, Options{})
	require.NoError(t, err)
	require.Len(t, all, 1)
	sub := all[0].Subject
	name, ok := sub.Get(tag.PatientName)
	assert.True(t, ok)
	assert.Equal(t, "DOE^JANE", name)
	id, _ := sub.Get(tag.PatientID)
	assert.Equal(t, "MRN-991", id)
	_, ok = sub.Get(tag.AccessionNumber)
	assert.False(t, ok, "absent in the source, absent here")
	var tags []tag.Tag
	for _, a := range sub.Attrs() {
		tags = append(tags, a.Tag)
	}
	assert.Equal(t, []tag.Tag{tag.StudyDate, tag.PatientName, tag.PatientID}, tags, "in tag order")
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(format, all[0])
		assert.NotContains(t, out, "DOE", format)
		assert.NotContains(t, out, "MRN-991", format)
	}
	assert.Contains(t, fmt.Sprint(sub), "redacted")
}
