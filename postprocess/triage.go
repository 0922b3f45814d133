package postprocess

import (
	"fmt"

	"github.com/voxserve/voxserve/bundle"
)

// Triage levels.
const (
	TriageUrgent  = "urgent"
	TriageRoutine = "routine"
)

// Triage applies a bundle's triage rules to a result: urgent when any rule
// holds, routine otherwise, with the reasons in words. It returns "" when
// the bundle sets no rules.
func Triage(spec *bundle.Spec, r *Result) (string, []string) {
	tr := spec.Triage
	if tr == nil {
		return "", nil
	}
	var reasons []string
	for _, name := range tr.UrgentFindings {
		for _, f := range r.Findings {
			if f.Label == name && f.Present {
				reasons = append(reasons, fmt.Sprintf("%s present (probability %.3f >= threshold %.3f)", f.Label, f.Probability, f.Threshold))
			}
		}
	}
	for _, rule := range tr.UrgentMeasurements {
		for _, m := range r.Measurements {
			if m.Label == rule.Label && m.Name == rule.Name && m.Value >= rule.AtLeast {
				reasons = append(reasons, fmt.Sprintf("%s %s %.3g %s >= %.3g", m.Label, m.Name, m.Value, m.Unit, rule.AtLeast))
			}
		}
	}
	if len(reasons) > 0 {
		return TriageUrgent, reasons
	}
	return TriageRoutine, []string{"no urgent finding"}
}
