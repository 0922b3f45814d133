#!/usr/bin/env python3
"""Independent check of the DICOM SR and SEG that voxserve writes.

Reads them back with highdicom and pydicom (not with voxserve's own reader)
and compares them with the ground truth named in a manifest:

  {"source": [paths of the source instances, in truth slice order],
   "truth_labels": "labels.npy",           # uint8 (slices, rows, columns)
   "seg": "seg.dcm" | null,
   "segments": {"1": 3, ...},               # segment number -> truth label
   "fractions": "fractions.npy",            # fractional SEG: uint8 (segments, slices, rows, columns)
   "sr": "sr.dcm" | null,
   "measurements": [{"label", "meaning", "unit", "value"}],
   "findings": [{"label", "present"}],
   "triage": "urgent" | "routine" | null}

Prints a JSON object: {"errors": [...], "checked": {...}}. The Go tests in
dicomout and server run it; it is also handy by hand.
"""
import json
import sys

import highdicom as hd
import numpy as np
import pydicom


def check_seg(m, src, errors, checked):
    seg = hd.seg.segread(m["seg"])
    truth = np.load(m["truth_labels"]) if m.get("truth_labels") else None
    uids = [ds.SOPInstanceUID for ds in src]
    numbers = sorted(int(k) for k in m["segments"])
    fractions = np.load(m["fractions"]) if m.get("fractions") else None
    want_type = "FRACTIONAL" if fractions is not None else "BINARY"
    if seg.SegmentationType != want_type:
        errors.append(f"SegmentationType {seg.SegmentationType}, want {want_type}")
    # 1. Masks by the Derivation Image references, voxel by voxel.
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=False,
        rescale_fractional=False)
    for i, n in enumerate(numbers):
        if fractions is not None:
            want, got = fractions[i], px[..., i]
            bad = int((got != want).sum())
            checked[f"segment_{n}_nonzero"] = int((want > 0).sum())
            if bad:
                errors.append(f"segment {n}: {bad} of {want.size} fractions differ")
            continue
        want = truth == m["segments"][str(n)]
        got = px[..., i].astype(bool)
        if got.shape != want.shape:
            errors.append(f"segment {n}: shape {got.shape}, truth {want.shape}")
            continue
        bad = int((got != want).sum())
        checked[f"segment_{n}_voxels"] = int(want.sum())
        if bad:
            errors.append(f"segment {n}: {bad} of {want.size} voxels differ from the truth")
    # 2. Positions: each frame's plane lies on the slice it references.
    by_uid = {ds.SOPInstanceUID: ds for ds in src}
    has_position = "ImagePositionPatient" in src[0]
    shared = seg.SharedFunctionalGroupsSequence[0]
    if has_position:
        iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        if not np.allclose(iop, np.array(src[0].ImageOrientationPatient, float), atol=1e-5):
            errors.append(f"orientation {iop} differs from the source {src[0].ImageOrientationPatient}")
    if has_position:
        ps = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)
        if not np.allclose(ps, np.array(src[0].PixelSpacing, float), rtol=1e-6):
            errors.append(f"pixel spacing {ps} differs from the source {src[0].PixelSpacing}")
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        if ref not in by_uid:
            errors.append(f"frame {f + 1} references an unknown instance {ref}")
            continue
        if has_position:
            got = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
            want = np.array(by_uid[ref].ImagePositionPatient, float)
            if not np.allclose(got, want, atol=1e-3):
                errors.append(f"frame {f + 1}: position {got} but its source slice is at {want}")
    checked["seg_frames"] = int(seg.NumberOfFrames)
    # 3. Geometry, independently of the references: every voxel of the SEG
    # volume, placed in patient space by highdicom from the SEG's own
    # positions and orientation, must land on a truth voxel placed in
    # patient space from the source instances' own geometry tags.
    if has_position and len(src) > 1:
        vol = seg.get_volume(combine_segments=False, segment_numbers=numbers, rescale_fractional=False)
        for i, n in enumerate(numbers):
            idx = np.argwhere(vol.array[..., i] > 0)
            got = (vol.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T if len(idx) else np.zeros((0, 3))
            want = []
            for k, ds in enumerate(src):
                hit = fractions[i][k] > 0 if fractions is not None else truth[k] == m["segments"][str(n)]
                rr, cc = np.nonzero(hit)
                o = np.array(ds.ImageOrientationPatient, float)
                ps = np.array(ds.PixelSpacing, float)
                ipp = np.array(ds.ImagePositionPatient, float)
                want.append(ipp + np.outer(cc * ps[1], o[:3]) + np.outer(rr * ps[0], o[3:]))
            want = np.concatenate(want) if want else np.zeros((0, 3))
            key = lambda a: {tuple(x) for x in np.round(a, 2)}
            missing, extra = len(key(want) - key(got)), len(key(got) - key(want))
            if missing or extra:
                errors.append(f"segment {n}: in patient space {missing} truth voxels not segmented, {extra} segmented voxels off the truth")
        checked["seg_geometry"] = True


def check_multiframe_seg(m, src, errors, checked):
    """A SEG of one multi-frame source: each SEG frame references a source
    frame; its position must be that frame's, and its pixels the truth's
    at that position (truth in volume order, along the slice normal)."""
    seg = hd.seg.segread(m["seg"])
    truth = np.load(m["truth_labels"])
    s = src[0]
    iop = np.array(s.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in s.PerFrameFunctionalGroupsSequence]
    rank = np.argsort(np.argsort([float(np.dot(normal, p)) for p in pos]))  # frame index -> volume slice
    px = seg.pixel_array
    if px.ndim == 2:
        px = px[None]
    n = 0
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        if ref.ReferencedSOPInstanceUID != s.SOPInstanceUID:
            errors.append(f"frame {f + 1} references another instance")
            continue
        num = int(ref.ReferencedFrameNumber)
        got = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        if not np.allclose(got, pos[num - 1], atol=1e-3):
            errors.append(f"frame {f + 1}: position {got}, its source frame {num} is at {pos[num - 1]}")
        want = truth[rank[num - 1]] > 0
        bad = int((px[f].astype(bool) != want).sum())
        if bad:
            errors.append(f"frame {f + 1} (source frame {num}): {bad} pixels differ from the truth")
        n += int(px[f].astype(bool).sum())
    checked["segmented_voxels"] = n


def check_sr(m, src, errors, checked):
    ds = pydicom.dcmread(m["sr"])
    sr = hd.sr.srread(m["sr"])
    report = sr.content
    if ds.VerificationFlag != "UNVERIFIED":
        errors.append(f"VerificationFlag {ds.VerificationFlag}")
    if "not for diagnostic use" not in ds.SeriesDescription:
        errors.append(f"SeriesDescription {ds.SeriesDescription!r} does not say it is not for diagnostic use")
    eq = ds.get("ContributingEquipmentSequence")
    if not eq or not eq[0].get("DeviceUID"):
        errors.append("no algorithm in the Contributing Equipment Sequence")
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
        if str(ds.get(kw, "")) != str(src[0].get(kw, "")):
            errors.append(f"{kw} not copied from the source")
    refs = {r.ReferencedSOPInstanceUID
            for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence}
    missing = {d.SOPInstanceUID for d in src} - refs
    if missing:
        errors.append(f"{len(missing)} source instances missing from the evidence")
    groups = list(report.get_image_measurement_groups()) + list(report.get_volumetric_roi_measurement_groups())
    by_label = {}
    for g in groups:
        by_label.setdefault(g.tracking_identifier, []).append(g)
    n = 0
    for want in m.get("measurements", []):
        found = False
        for g in by_label.get(want["label"], []):
            for meas in g.get_measurements():
                if meas.name.meaning == want["meaning"] and meas.unit.value == want["unit"]:
                    if abs(float(meas.value) - want["value"]) <= 1e-6 * max(1.0, abs(want["value"])):
                        found = True
        if not found:
            errors.append(f"measurement {want['label']}/{want['meaning']} = {want['value']} {want['unit']} not found")
        n += 1
    checked["sr_measurements"] = n
    for want in m.get("findings", []):
        gs = by_label.get(want["label"], [])
        vals = [q.value.meaning for g in gs for q in g.get_qualitative_evaluations()]
        if ("Present" if want["present"] else "Absent") not in vals:
            errors.append(f"finding {want['label']}: no {'Present' if want['present'] else 'Absent'} evaluation (have {vals})")
    checked["sr_findings"] = len(m.get("findings", []))
    if m.get("seg"):
        seg = pydicom.dcmread(m["seg"], stop_before_pixels=True)
        vol_groups = report.get_volumetric_roi_measurement_groups()
        if not vol_groups:
            errors.append("no volumetric measurement group references the SEG")
        for g in vol_groups:
            rs = g.referenced_segment
            if rs is None or rs.referenced_sop_instance_uid != seg.SOPInstanceUID:
                errors.append(f"group {g.tracking_identifier} does not reference the SEG")
            elif not rs.referenced_segment_numbers:
                errors.append(f"group {g.tracking_identifier} names no segment number")
    if m.get("triage"):
        vals = [q.value.meaning for g in by_label.get("triage", []) for q in g.get_qualitative_evaluations()]
        if m["triage"].capitalize() not in vals:
            errors.append(f"triage {m['triage']} not in the SR (have {vals})")


def main():
    m = json.load(open(sys.argv[1]))
    errors, checked = [], {}
    src = [pydicom.dcmread(p) for p in m["source"]]
    seg_check = check_multiframe_seg if m.get("extra", {}).get("multiframe") else check_seg
    for name, fn in (("seg", seg_check), ("sr", check_sr)):
        if m.get(name):
            try:
                fn(m, src, errors, checked)
            except Exception as e:  # a reader that refuses the object is a failure too
                errors.append(f"{name}: {type(e).__name__}: {e}")
    print(json.dumps({"errors": errors, "checked": checked}))


if __name__ == "__main__":
    main()
