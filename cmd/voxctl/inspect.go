package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/voxserve/voxserve/dicom"
)

// seriesReport is what `voxctl inspect` prints per series. It carries UIDs
// and acquisition facts, never patient identity.
type seriesReport struct {
	StudyInstanceUID  string     `json:"study_instance_uid"`
	SeriesInstanceUID string     `json:"series_instance_uid"`
	Modality          string     `json:"modality"`
	BodyPart          string     `json:"body_part,omitempty"`
	Manufacturer      string     `json:"manufacturer,omitempty"`
	TransferSyntax    string     `json:"transfer_syntax"`
	Instances         int        `json:"instances"`
	Dims              [3]int64   `json:"dims"` // slices, rows, columns
	Spacing           [3]float64 `json:"spacing_mm"`
	Origin            [3]float64 `json:"origin_mm"`
	Direction         [9]float64 `json:"direction"`
	SliceThickness    float64    `json:"slice_thickness_mm,omitempty"`
	KVP               float64    `json:"kvp,omitempty"`
	Min               float64    `json:"min"`
	Max               float64    `json:"max"`
	Mean              float64    `json:"mean"`
	Problems          []string   `json:"problems,omitempty"`
}

type inspectReport struct {
	Series  []seriesReport  `json:"series"`
	Skipped []dicom.Skipped `json:"skipped,omitempty"`
	Errors  []string        `json:"errors,omitempty"`
}

func cmdInspect(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	strict := fs.Bool("strict-spacing", false, "treat missing slices and uneven spacing as errors")
	paths, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		return usageErr("inspect: give one or more files or folders")
	}
	var inputs []dicom.Input
	rep := inspectReport{}
	for _, p := range paths {
		err := filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				rep.Errors = append(rep.Errors, err.Error())
				return nil
			}
			if d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				rep.Errors = append(rep.Errors, err.Error())
				return nil
			}
			inputs = append(inputs, dicom.Input{Source: path, Data: b})
			return nil
		})
		if err != nil {
			return &exitError{1, err}
		}
	}
	var good []*dicom.Instance
	for _, in := range inputs {
		inst, err := dicom.Read(in.Source, in.Data)
		if err != nil {
			if reason, skip := dicom.Skippable(in, err); skip {
				rep.Skipped = append(rep.Skipped, dicom.Skipped{Source: in.Source, Reason: reason})
			} else {
				rep.Errors = append(rep.Errors, err.Error())
			}
			continue
		}
		good = append(good, inst)
	}
	for _, group := range dicom.Group(good) {
		s, err := dicom.Assemble(group, dicom.Options{StrictSpacing: *strict})
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			continue
		}
		rep.Series = append(rep.Series, summarise(s, len(group)))
	}
	sort.Slice(rep.Series, func(i, j int) bool { return rep.Series[i].SeriesInstanceUID < rep.Series[j].SeriesInstanceUID })
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printInspect(out, rep)
	}
	if len(rep.Series) == 0 {
		return &exitError{1, errors.New("no usable image series")}
	}
	return nil
}

func summarise(s *dicom.Series, instances int) seriesReport {
	v, _ := s.Volume.Float32()
	lo, hi, sum := math.Inf(1), math.Inf(-1), 0.0
	for _, x := range v {
		f := float64(x)
		lo, hi, sum = math.Min(lo, f), math.Max(hi, f), sum+f
	}
	g := s.Volume.Geometry
	return seriesReport{
		StudyInstanceUID: s.StudyInstanceUID, SeriesInstanceUID: s.SeriesInstanceUID, Modality: s.Modality,
		BodyPart: s.BodyPart, Manufacturer: s.Manufacturer, TransferSyntax: dicom.SyntaxName(s.TransferSyntax),
		Instances: instances, Dims: s.Volume.Dims, Spacing: g.Spacing, Origin: g.Origin, Direction: g.Direction,
		SliceThickness: s.SliceThickness, KVP: s.KVP, Min: lo, Max: hi, Mean: sum / float64(len(v)), Problems: s.Problems,
	}
}

func printInspect(out io.Writer, rep inspectReport) {
	for _, s := range rep.Series {
		fmt.Fprintf(out, "series %s (study %s)\n", s.SeriesInstanceUID, s.StudyInstanceUID)
		fmt.Fprintf(out, "  modality %s  body part %s  %s  %d instances\n", orDash(s.Modality), orDash(s.BodyPart), s.TransferSyntax, s.Instances)
		fmt.Fprintf(out, "  dims %d x %d x %d (columns x rows x slices)  spacing %.3f x %.3f x %.3f mm\n",
			s.Dims[2], s.Dims[1], s.Dims[0], s.Spacing[0], s.Spacing[1], s.Spacing[2])
		d := s.Direction
		fmt.Fprintf(out, "  orientation row [%.3f %.3f %.3f] column [%.3f %.3f %.3f]  origin [%.2f %.2f %.2f] mm\n",
			d[0], d[1], d[2], d[3], d[4], d[5], s.Origin[0], s.Origin[1], s.Origin[2])
		fmt.Fprintf(out, "  values min %.1f  max %.1f  mean %.1f\n", s.Min, s.Max, s.Mean)
		for _, p := range s.Problems {
			fmt.Fprintf(out, "  problem: %s\n", p)
		}
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(out, "skipped %s: %s\n", s.Source, s.Reason)
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(out, "error %s\n", e)
	}
}
