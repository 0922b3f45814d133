#!/usr/bin/env python3
"""The peer for DICOM SEG writing: highdicom builds and encodes a binary
SEG of a CT series from a mask, as voxserve's dicomout.SEG does.

  highdicom_seg.py SERIES_DIR MASK.npy RUNS

The series is read once (not timed); each run times building the
Segmentation and writing it to bytes. Prints the median and best time."""
import io
import statistics
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

series_dir, mask_path, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ds = [pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))]
normal = np.cross(np.array(ds[0].ImageOrientationPatient[:3], float), np.array(ds[0].ImageOrientationPatient[3:], float))
ds.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))  # voxserve's volume order
for d in ds:  # highdicom wants the Type 2 patient and study attributes present
    for kw in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
               "AccessionNumber", "ReferringPhysicianName"):
        if kw not in d:
            setattr(d, kw, "")
mask = np.load(mask_path).astype(bool)
assert mask.shape == (len(ds), ds[0].Rows, ds[0].Columns), mask.shape

desc = hd.seg.SegmentDescription(
    segment_number=1, segment_label="hemorrhage",
    segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"),
    segmented_property_type=hd.sr.CodedConcept("50960005", "SCT", "Hemorrhage"),
    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    algorithm_identification=hd.AlgorithmIdentificationSequence(
        name="bench", version="1", family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing")),
)
times = []
size = 0
for _ in range(runs):
    t0 = time.perf_counter()
    seg = hd.seg.Segmentation(
        source_images=ds, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=9002,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bench", manufacturer_model_name="bench",
        software_versions="1", device_serial_number="1", omit_empty_frames=False)
    buf = io.BytesIO()
    seg.save_as(buf)
    times.append((time.perf_counter() - t0) * 1000)
    size = buf.tell()
print(f"highdicom {hd.__version__}: {len(ds)} frames, {size / 1e6:.1f} MB, median {statistics.median(times):.1f} ms (min {min(times):.1f}) over {runs} runs")
