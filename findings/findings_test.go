package findings

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// TestSchemaStable pins the document's field names: changing one breaks
// orchestrators, and needs a new Schema version.
func TestSchemaStable(t *testing.T) {
	r := &pb.InferResponse{Model: "ich", Version: "1", RequestId: "r1", StudyInstanceUid: "1.2", SeriesInstanceUid: "1.2.3",
		Triage: pb.Triage_TRIAGE_URGENT, TriageReasons: []string{"ich present"},
		Findings:     []*pb.Finding{{Label: "ich", Code: &pb.Code{Scheme: "SCT", Value: "1386000", Meaning: "Intracranial hemorrhage"}, Probability: 0.9, Threshold: 0.5, Present: true}},
		Measurements: []*pb.Measurement{{Label: "hemorrhage", Name: "hemorrhage volume", Value: 12.5, Unit: "mL"}},
		Masks:        []*pb.Mask{{Output: "m", Labels: []string{"hemorrhage"}, Dims: []int64{3, 4, 5}}},
		Timings:      &pb.Timings{TotalUs: 1500}}
	b, err := FromResponse(r).Marshal()
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, "voxserve.findings/v1", got["schema"])
	keys := func(m map[string]any) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		return k
	}
	assert.ElementsMatch(t, []string{"schema", "model", "request_id", "study_instance_uid", "series_instance_uid", "triage",
		"findings", "measurements", "masks", "warnings", "timings_ms", "not_for_diagnostic_use"}, keys(got))
	assert.ElementsMatch(t, []string{"label", "code", "probability", "threshold", "present"}, keys(got["findings"].([]any)[0].(map[string]any)))
	assert.ElementsMatch(t, []string{"label", "name", "value", "unit"}, keys(got["measurements"].([]any)[0].(map[string]any)))
	assert.ElementsMatch(t, []string{"level", "reasons"}, keys(got["triage"].(map[string]any)))
	assert.ElementsMatch(t, []string{"queue", "preprocess", "inference", "postprocess", "total"}, keys(got["timings_ms"].(map[string]any)))
	assert.Equal(t, 1.5, got["timings_ms"].(map[string]any)["total"])

	empty, err := FromResponse(&pb.InferResponse{}).Marshal()
	require.NoError(t, err)
	assert.Contains(t, string(empty), `"findings": []`, "empty lists, not null")
	assert.NotContains(t, string(empty), `"triage"`, "no triage without bundle rules")
}
