"""Peer baseline for the preprocessing chain: a 512x512x300 float32 CT
(0.45 x 0.45 x 0.625 mm) resampled to 1 mm isotropic with trilinear
interpolation (scipy.ndimage.zoom, order=1) and windowed (brain 40/80) with
numpy, as Python pipelines do it. Prints the median of N runs.

usage: numpy_preprocess.py [RUNS]
"""
import statistics
import sys
import time

import numpy as np
from scipy import ndimage

nz, ny, nx = 300, 512, 512
k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
vol = (((i * 7 + j * 13 + k * 3) % 2000) - 1000).astype(np.float32)
spacing = np.array([0.625, 0.45, 0.45])  # z, y, x
out_shape = np.round(np.array(vol.shape) * spacing / 1.0).astype(int)


def chain(v):
    r = ndimage.zoom(v, out_shape / np.array(v.shape), order=1, prefilter=False)
    lo, width = 40 - 80 / 2, 80
    return np.clip((r - lo) / width, 0, 1).astype(np.float32)


runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
times = []
for _ in range(runs):
    t0 = time.perf_counter()
    out = chain(vol)
    times.append(time.perf_counter() - t0)
print(f"numpy+scipy: {vol.shape} -> {out.shape}, median {statistics.median(times)*1000:.1f} ms over {runs} runs (min {min(times)*1000:.1f})")
