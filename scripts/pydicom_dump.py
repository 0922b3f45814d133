"""Decode DICOM files with pydicom + numpy, as an independent reference.

usage: pydicom_dump.py OUT_DIR FILE...

For each FILE writes OUT_DIR/<basename>.npy with the stored pixel values as
int64 [frames, rows, columns] (pydicom's pixel_array: Bits Stored applied,
sign extended, no rescale), and OUT_DIR/index.json with, per file, either
{"error": ...} or the geometry and rescale pydicom read.
"""
import json
import os
import sys
import warnings

import numpy as np
import pydicom

warnings.simplefilter("ignore")


def floats(ds, name, n):
    v = ds.get(name)
    if v is None or v == "":
        return None
    v = list(v) if n > 1 else [v]
    return [float(x) for x in v] if len(v) == n else None


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    index = {}
    for path in sys.argv[2:]:
        name = os.path.basename(path)
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            arr = np.asarray(arr).astype(np.int64).reshape(frames, int(ds.Rows), int(ds.Columns))
            np.save(os.path.join(out, name + ".npy"), arr)
            index[name] = {
                "rows": int(ds.Rows), "columns": int(ds.Columns), "frames": frames,
                "photometric": str(ds.get("PhotometricInterpretation", "")),
                "slope": float(ds.get("RescaleSlope", 1) or 1),
                "intercept": float(ds.get("RescaleIntercept", 0) or 0),
                "position": floats(ds, "ImagePositionPatient", 3),
                "orientation": floats(ds, "ImageOrientationPatient", 6),
                "spacing": floats(ds, "PixelSpacing", 2),
                "syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
            }
        except Exception as e:  # noqa: BLE001 - every failure is a result here
            index[name] = {"error": f"{type(e).__name__}: {e}"}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
