package dicomout

import (
	"fmt"

	"github.com/suyashkumar/dicom/pkg/tag"
)

// Finding is a classification result: one label's probability and decision.
type Finding struct {
	Label       string
	Code        *Code
	Probability float64
	Threshold   float64
	Present     bool
}

// Measurement is one value measured on a segmented structure.
type Measurement struct {
	Label     string // the structure (a SEG segment label)
	LabelCode *Code
	Name      string
	Kind      string // the bundle's measurement type: volume, max_axial_area, ...
	Value     float64
	Unit      string // UCUM
}

// Report is what an SR states.
type Report struct {
	Findings     []Finding
	Measurements []Measurement
	// Triage is "urgent", "routine" or empty when the bundle sets no rule.
	Triage string
}

// LocalScheme is voxserve's private coding scheme (PS3.16 8.2: designators
// starting with 99 are local) for concepts no standard code covers.
const LocalScheme = "99VOXSERVE"

// Codes used in the report.
var (
	codeReport      = Code{"126000", "DCM", "Imaging Measurement Report"}
	codeLanguage    = Code{"121049", "DCM", "Language of Content Item and Descendants"}
	codeEnglishUS   = Code{"en-US", "RFC5646", "English (United States)"}
	codeObserver    = Code{"121005", "DCM", "Observer Type"}
	codeDevice      = Code{"121007", "DCM", "Device"}
	codeDeviceUID   = Code{"121012", "DCM", "Device Observer UID"}
	codeDeviceName  = Code{"121013", "DCM", "Device Observer Name"}
	codeDeviceMaker = Code{"121014", "DCM", "Device Observer Manufacturer"}
	codeDeviceModel = Code{"121015", "DCM", "Device Observer Model Name"}
	codeProcedure   = Code{"121058", "DCM", "Procedure reported"}
	codeLibrary     = Code{"111028", "DCM", "Image Library"}
	codeLibGroup    = Code{"126200", "DCM", "Image Library Group"}
	codeSource      = Code{"260753009", "SCT", "Source"}
	codeMeasures    = Code{"126010", "DCM", "Imaging Measurements"}
	codeGroup       = Code{"125007", "DCM", "Measurement Group"}
	codeTrackingID  = Code{"112039", "DCM", "Tracking Identifier"}
	codeTrackingUID = Code{"112040", "DCM", "Tracking Unique Identifier"}
	codeFinding     = Code{"121071", "DCM", "Finding"}
	codeAlgName     = Code{"111001", "DCM", "Algorithm Name"}
	codeAlgVersion  = Code{"111003", "DCM", "Algorithm Version"}
	codeSegment     = Code{"121191", "DCM", "Referenced Segment"}
	codeSegSeries   = Code{"121232", "DCM", "Source series for segmentation"}
	codePresent     = Code{"52101004", "SCT", "Present"}
	codeAbsent      = Code{"2667000", "SCT", "Absent"}
	codeDerivation  = Code{"121401", "DCM", "Derivation"}
	codeMean        = Code{"373098007", "SCT", "Mean"}
	codeMaximum     = Code{"56851009", "SCT", "Maximum"}
	codeProbability = Code{"PROBABILITY", LocalScheme, "Probability of finding"}
	codeThreshold   = Code{"THRESHOLD", LocalScheme, "Decision threshold"}
	codeTriage      = Code{"TRIAGE", LocalScheme, "Worklist triage"}
	codeUrgent      = Code{"URGENT", LocalScheme, "Urgent"}
	codeRoutine     = Code{"ROUTINE", LocalScheme, "Routine"}
	codeNoUnits     = Code{"1", "UCUM", "no units"}
)

// LocalCode is a concept of voxserve's local scheme named after a label,
// for labels a bundle gives no standard code.
func LocalCode(label string) Code { return Code{csValue(label), LocalScheme, label} }

// procedure names what was imaged, by modality (CID 100 style).
func procedure(modality string) Code {
	switch modality {
	case "CT":
		return Code{"77477000", "SCT", "Computerized axial tomography"}
	case "MR":
		return Code{"113091000", "SCT", "Magnetic resonance imaging"}
	case "DX", "CR":
		return Code{"363680008", "SCT", "Radiographic imaging procedure"}
	}
	return Code{"363679005", "SCT", "Imaging"}
}

// MeasurementConcept is the SR concept (and optional derivation modifier)
// of a bundle measurement type; name titles a measurement of unknown type.
func MeasurementConcept(kind, name, modality string) (Code, *Code) {
	switch kind {
	case "volume":
		return Code{"118565006", "SCT", "Volume"}, nil
	case "craniocaudal_length":
		return Code{"410668003", "SCT", "Length"}, nil
	case "max_axial_area":
		return Code{"42798000", "SCT", "Area"}, &codeMaximum
	case "mean_intensity":
		if modality == "CT" {
			return Code{"112031", "DCM", "Attenuation Coefficient"}, &codeMean
		}
		return Code{"MEAN_INTENSITY", LocalScheme, "Mean intensity"}, nil
	case "side_fraction":
		return Code{"AREA_FRACTION", LocalScheme, "Area fraction of hemithorax"}, nil
	}
	return LocalCode(name), nil
}

// ucum names UCUM units for the Measurement Units Code Sequence.
var ucum = map[string]string{
	"mL": "milliliter", "cm": "centimeter", "mm": "millimeter", "cm2": "square centimeter",
	"mm2": "square millimeter", "[hnsf'U]": "Hounsfield unit", "1": "no units", "%": "percent",
	"{ratio}": "ratio", "{intensity}": "intensity",
}

func unitCode(u string) Code {
	if m, ok := ucum[u]; ok {
		return Code{u, "UCUM", m}
	}
	return Code{u, "UCUM", u}
}

// content starts an SR content item. rel is empty for the root.
func content(rel, valueType string, name Code) *item {
	it := &item{}
	if rel != "" {
		it.str(tag.RelationshipType, rel)
	}
	it.str(tag.ValueType, valueType)
	it.seq(tag.ConceptNameCodeSequence, codeItem(name))
	return it
}

func textItem(rel string, name Code, v string) *item {
	it := content(rel, "TEXT", name)
	it.str(tag.TextValue, v)
	return it
}

func codeValueItem(rel string, name, v Code) *item {
	it := content(rel, "CODE", name)
	it.seq(tag.ConceptCodeSequence, codeItem(v))
	return it
}

func uidItem(rel string, name Code, uid string) *item {
	it := content(rel, "UIDREF", name)
	it.str(tag.UID, uid)
	return it
}

func numItem(name Code, v float64, unit Code, mods ...*item) *item {
	it := content("CONTAINS", "NUM", name)
	mv := &item{}
	mv.seq(tag.MeasurementUnitsCodeSequence, codeItem(unit))
	mv.str(tag.NumericValue, decimal(v))
	it.seq(tag.MeasuredValueSequence, mv)
	if len(mods) > 0 {
		it.seq(tag.ContentSequence, mods...)
	}
	return it
}

func container(rel string, name Code, children ...*item) *item {
	it := content(rel, "CONTAINER", name)
	it.str(tag.ContinuityOfContent, "SEPARATE")
	it.seq(tag.ContentSequence, children...)
	return it
}

func imageItem(rel string, name Code, class, instance string, segment int) *item {
	it := content(rel, "IMAGE", name)
	ref := &item{}
	ref.str(tag.ReferencedSOPClassUID, class)
	ref.str(tag.ReferencedSOPInstanceUID, instance)
	if segment > 0 {
		ref.add(tag.ReferencedSegmentNumber, []int{segment})
	}
	it.seq(tag.ReferencedSOPSequence, ref)
	return it
}

// SR encodes a TID 1500 Measurement Report as a Comprehensive 3D SR. seg,
// when not nil, is the SEG produced with it: measurement groups of
// segmented structures then reference their segment (TID 1411).
func SR(src Source, rep Report, seg *SegInfo, alg Algorithm, opt Options) (*Object, error) {
	if err := checkSource(&src, "SR"); err != nil {
		return nil, err
	}
	if len(rep.Findings) == 0 && len(rep.Measurements) == 0 {
		return nil, fmt.Errorf("SR: nothing to report (no findings or measurements)")
	}
	sopUID, seriesUID := opt.UIDs.New(), opt.UIDs.New()
	// groupStart opens a measurement group: its tracking identifiers and
	// the algorithm (TID 4019), then what is found, when anything is.
	groupStart := func(label string, finding *Code) []*item {
		items := []*item{
			textItem("HAS OBS CONTEXT", codeTrackingID, truncate(label, 64)),
			uidItem("HAS OBS CONTEXT", codeTrackingUID, opt.UIDs.New()),
		}
		if finding != nil {
			items = append(items, codeValueItem("CONTAINS", codeFinding, *finding))
		}
		return append(items, textItem("HAS CONCEPT MOD", codeAlgName, alg.Name), textItem("HAS CONCEPT MOD", codeAlgVersion, alg.Version))
	}

	var groups []*item
	for _, f := range rep.Findings {
		name := LocalCode(f.Label)
		if f.Code != nil {
			name = *f.Code
		}
		decision := codeAbsent
		if f.Present {
			decision = codePresent
		}
		children := append(groupStart(f.Label, &name),
			numItem(codeProbability, f.Probability, codeNoUnits),
			numItem(codeThreshold, f.Threshold, codeNoUnits),
			codeValueItem("CONTAINS", name, decision))
		groups = append(groups, container("CONTAINS", codeGroup, children...))
	}

	// One group per measured structure, in the order measurements came.
	var order []string
	byLabel := map[string][]Measurement{}
	for _, m := range rep.Measurements {
		if _, ok := byLabel[m.Label]; !ok {
			order = append(order, m.Label)
		}
		byLabel[m.Label] = append(byLabel[m.Label], m)
	}
	for _, label := range order {
		ms := byLabel[label]
		name := LocalCode(label)
		if ms[0].LabelCode != nil {
			name = *ms[0].LabelCode
		}
		children := groupStart(label, &name)
		if seg != nil {
			if n, ok := seg.Numbers[label]; ok {
				children = append(children,
					imageItem("CONTAINS", codeSegment, seg.SOPClassUID, seg.SOPInstanceUID, n),
					uidItem("CONTAINS", codeSegSeries, src.SeriesUID))
			}
		}
		for _, m := range ms {
			concept, derivation := MeasurementConcept(m.Kind, m.Name, src.Modality)
			var mods []*item
			if derivation != nil {
				mods = append(mods, codeValueItem("HAS CONCEPT MOD", codeDerivation, *derivation))
			}
			children = append(children, numItem(concept, m.Value, unitCode(m.Unit), mods...))
		}
		groups = append(groups, container("CONTAINS", codeGroup, children...))
	}
	if rep.Triage != "" {
		v := codeRoutine
		if rep.Triage == "urgent" {
			v = codeUrgent
		}
		children := append(groupStart("triage", nil), codeValueItem("CONTAINS", codeTriage, v))
		groups = append(groups, container("CONTAINS", codeGroup, children...))
	}

	// The image library lists every source instance once.
	var images []*item
	seen := map[string]bool{}
	for _, in := range src.Instances {
		if !seen[in.SOPInstanceUID] {
			seen[in.SOPInstanceUID] = true
			images = append(images, imageItem("CONTAINS", codeSource, in.SOPClassUID, in.SOPInstanceUID, 0))
		}
	}

	root := container("", codeReport,
		codeValueItem("HAS CONCEPT MOD", codeLanguage, codeEnglishUS),
		codeValueItem("HAS OBS CONTEXT", codeObserver, codeDevice),
		uidItem("HAS OBS CONTEXT", codeDeviceUID, alg.DeviceUID),
		textItem("HAS OBS CONTEXT", codeDeviceName, truncate("voxserve "+alg.Name, 64)),
		textItem("HAS OBS CONTEXT", codeDeviceMaker, "voxserve"),
		textItem("HAS OBS CONTEXT", codeDeviceModel, truncate(alg.Name+" "+alg.Version, 64)),
		codeValueItem("HAS CONCEPT MOD", codeProcedure, procedure(src.Modality)),
		container("CONTAINS", codeLibrary, container("CONTAINS", codeLibGroup, images...)),
		container("CONTAINS", codeMeasures, groups...),
	)
	tpl := &item{}
	tpl.str(tag.MappingResource, "DCMR")
	tpl.str(tag.TemplateIdentifier, "1500")
	root.seq(tag.ContentTemplateSequence, tpl)

	num := opt.SeriesNumber
	if num == 0 {
		num = 9001
	}
	it := root // the root content item's attributes live in the dataset itself
	common(it, &src, alg, &opt, Comprehensive3DSR, sopUID, seriesUID, "SR", "report", num)
	it.seq(tag.ReferencedPerformedProcedureStepSequence)
	it.str(tag.CompletionFlag, "COMPLETE")
	it.str(tag.VerificationFlag, "UNVERIFIED")
	it.seq(tag.PerformedProcedureCodeSequence)
	// Evidence: the source series and, when produced, the SEG.
	ev := &item{}
	ev.str(tag.StudyInstanceUID, src.StudyUID)
	evSeries := []*item{evidenceSeries(src.SeriesUID, src.Instances)}
	if seg != nil {
		evSeries = append(evSeries, evidenceSeries(seg.SeriesUID, nil, seg.Object))
	}
	ev.seq(tag.ReferencedSeriesSequence, evSeries...)
	it.seq(tag.CurrentRequestedProcedureEvidenceSequence, ev)
	b, err := it.encode(Comprehensive3DSR, sopUID, nil)
	if err != nil {
		return nil, fmt.Errorf("SR: encoding: %w", err)
	}
	return &Object{Bytes: b, SOPClassUID: Comprehensive3DSR, SOPInstanceUID: sopUID, SeriesUID: seriesUID}, nil
}

// evidenceSeries is one series of the Hierarchical SOP Instance Reference
// macro (PS3.3 C.17.2.1).
func evidenceSeries(seriesUID string, instances []sliceRef, objects ...Object) *item {
	s := &item{}
	s.str(tag.SeriesInstanceUID, seriesUID)
	var refs []*item
	seen := map[string]bool{}
	add := func(class, inst string) {
		if seen[inst] {
			return
		}
		seen[inst] = true
		r := &item{}
		r.str(tag.ReferencedSOPClassUID, class)
		r.str(tag.ReferencedSOPInstanceUID, inst)
		refs = append(refs, r)
	}
	for _, in := range instances {
		add(in.SOPClassUID, in.SOPInstanceUID)
	}
	for _, o := range objects {
		add(o.SOPClassUID, o.SOPInstanceUID)
	}
	s.seq(tag.ReferencedSOPSequence, refs...)
	return s
}
