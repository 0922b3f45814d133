// Package findings is voxserve's JSON findings document: what an Infer
// response says about a study, for orchestrators that do not want DICOM.
// The schema is versioned (Schema) and documented in docs/outputs.md;
// fields are only ever added within a version.
package findings

import (
	"bytes"
	"encoding/json"

	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// Schema names this document's version.
const Schema = "voxserve.findings/v1"

// Document is the findings of one Infer call.
type Document struct {
	Schema       string        `json:"schema"`
	Model        Model         `json:"model"`
	RequestID    string        `json:"request_id,omitempty"`
	StudyUID     string        `json:"study_instance_uid,omitempty"`
	SeriesUID    string        `json:"series_instance_uid,omitempty"`
	Triage       *Triage       `json:"triage,omitempty"`
	Findings     []Finding     `json:"findings"`
	Measurements []Measurement `json:"measurements"`
	Masks        []Mask        `json:"masks"`
	Warnings     []string      `json:"warnings"`
	TimingsMS    Timings       `json:"timings_ms"`
	// NotForDiagnosticUse is always true: results are unverified AI output.
	NotForDiagnosticUse bool `json:"not_for_diagnostic_use"`
}

// Model names the model version that produced the document.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Triage is the worklist priority the bundle's rules derive.
type Triage struct {
	Level   string   `json:"level"` // urgent or routine
	Reasons []string `json:"reasons"`
}

// Code is a coded concept.
type Code struct {
	Scheme  string `json:"scheme"`
	Value   string `json:"value"`
	Meaning string `json:"meaning"`
}

// Finding is one label's probability and decision.
type Finding struct {
	Label       string  `json:"label"`
	Code        *Code   `json:"code,omitempty"`
	Probability float64 `json:"probability"`
	Threshold   float64 `json:"threshold"`
	Present     bool    `json:"present"`
}

// Measurement is one value with its UCUM unit.
type Measurement struct {
	Label string  `json:"label"`
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Mask describes a returned label map (its voxels stay in the response).
type Mask struct {
	Output string   `json:"output"`
	Labels []string `json:"labels"`
	Dims   []int64  `json:"dims"`
}

// Timings are the server's stage times in milliseconds.
type Timings struct {
	Queue       float64 `json:"queue"`
	Preprocess  float64 `json:"preprocess"`
	Inference   float64 `json:"inference"`
	Postprocess float64 `json:"postprocess"`
	Total       float64 `json:"total"`
}

// FromResponse builds the document of an Infer response.
func FromResponse(r *pb.InferResponse) *Document {
	d := &Document{Schema: Schema, Model: Model{r.GetModel(), r.GetVersion()}, RequestID: r.GetRequestId(),
		StudyUID: r.GetStudyInstanceUid(), SeriesUID: r.GetSeriesInstanceUid(),
		Findings: []Finding{}, Measurements: []Measurement{}, Masks: []Mask{}, Warnings: append([]string{}, r.GetWarnings()...),
		NotForDiagnosticUse: true}
	switch r.GetTriage() {
	case pb.Triage_TRIAGE_URGENT:
		d.Triage = &Triage{"urgent", r.GetTriageReasons()}
	case pb.Triage_TRIAGE_ROUTINE:
		d.Triage = &Triage{"routine", r.GetTriageReasons()}
	}
	for _, f := range r.GetFindings() {
		x := Finding{Label: f.GetLabel(), Probability: f.GetProbability(), Threshold: f.GetThreshold(), Present: f.GetPresent()}
		if c := f.GetCode(); c != nil {
			x.Code = &Code{c.GetScheme(), c.GetValue(), c.GetMeaning()}
		}
		d.Findings = append(d.Findings, x)
	}
	for _, m := range r.GetMeasurements() {
		d.Measurements = append(d.Measurements, Measurement{m.GetLabel(), m.GetName(), m.GetValue(), m.GetUnit()})
	}
	for _, m := range r.GetMasks() {
		d.Masks = append(d.Masks, Mask{m.GetOutput(), m.GetLabels(), m.GetDims()})
	}
	t := r.GetTimings()
	ms := func(us int64) float64 { return float64(us) / 1000 }
	d.TimingsMS = Timings{ms(t.GetQueueUs()), ms(t.GetPreprocessUs()), ms(t.GetInferenceUs()), ms(t.GetPostprocessUs()), ms(t.GetTotalUs())}
	return d
}

// Marshal encodes the document, indented, with a final newline (and
// without HTML escapes: reasons read ">=", not "\u003e=").
func (d *Document) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	err := enc.Encode(d)
	return buf.Bytes(), err
}
