"""Peer baseline: read a DICOM series into a float32 HU volume with pydicom
and numpy, as a Python pipeline does it (dcmread every file, sort along the
slice normal, apply rescale), and print the median wall time of N runs.

usage: pydicom_read.py DIR [RUNS]
"""
import glob
import os
import statistics
import sys
import time

import numpy as np
import pydicom


def read_series(paths):
    slices = [pydicom.dcmread(p) for p in paths]
    iop = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))
    vol = np.empty((len(slices), int(slices[0].Rows), int(slices[0].Columns)), dtype=np.float32)
    for k, ds in enumerate(slices):
        vol[k] = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return vol


def main():
    paths = sorted(glob.glob(os.path.join(sys.argv[1], "*.dcm")))
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        vol = read_series(paths)
        times.append(time.perf_counter() - t0)
    print(f"pydicom+numpy: {len(paths)} files -> {vol.shape} float32, median {statistics.median(times)*1000:.1f} ms over {runs} runs "
          f"(min {min(times)*1000:.1f}), checksum {float(vol.astype(np.float64).sum()):.1f}")


if __name__ == "__main__":
    main()
