#!/usr/bin/env python3
"""The Python peer: the ich bundle served the way Python stacks serve it,
pydicom + numpy + scipy + onnxruntime behind grpcio, speaking voxserve's
own API (voxserve.v1.Inference/Infer) so that voxbench drives both servers
with the same client and the same studies.

It does the work voxserve does for ich: series assembly (sort along the
slice normal, rescale), three windows, trilinear resampling to the bundle's
spacing, centre crop or pad to 128x128, 3-slice slabs, the model in
batches of 32, then the mask mapped back to the study's grid, thresholded,
cleared of components under 30 mm3, and its volume; the slice scores'
maximum against the bundle's threshold.

  peer_server.py ADDR [MODEL_DIR]       (default models/ich)
"""
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
import pydicom
import yaml
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_stubs():
    out = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
                    f"--python_out={out}", f"--grpc_python_out={out}", "voxserve/v1/voxserve.proto"], check=True)
    sys.path.insert(0, out)
    from voxserve.v1 import voxserve_pb2, voxserve_pb2_grpc
    return voxserve_pb2, voxserve_pb2_grpc


pb, pbg = load_stubs()


class Ich:
    def __init__(self, model_dir):
        spec = yaml.safe_load(open(os.path.join(model_dir, "bundle.yaml")))
        pp = spec["preprocessing"]
        self.windows = [(w["center"], w["width"]) for w in pp["windows"]]
        self.spacing = pp["target_spacing"]  # x, y, z
        self.size = pp["in_plane_size"]  # rows, columns
        self.r = pp["slab_slices"] // 2
        outs = {o["name"]: o for o in spec["outputs"]}
        self.mask_th = outs["hemorrhage_logits"]["labels"][0]["threshold"]
        self.min_mm3 = outs["hemorrhage_logits"]["min_component_mm3"]
        self.score_th = outs["slice_logits"]["labels"][0]["threshold"]
        self.max_batch = spec["max_batch_size"]
        opts = ort.SessionOptions()
        self.sess = ort.InferenceSession(os.path.join(model_dir, "1", "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def series(self, instances):
        ds = [pydicom.dcmread(io.BytesIO(b)) for b in instances]
        iop = np.array(ds[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        ds.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
        vol = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
        p0, p1 = (np.array(d.ImagePositionPatient, float) for d in ds[:2])
        dz = abs(float(np.dot(normal, p1 - p0)))
        ps = [float(v) for v in ds[0].PixelSpacing]  # rows, columns
        return vol, (dz, ps[0], ps[1])

    def infer(self, instances):
        t0 = time.perf_counter()
        vol, (sz, sy, sx) = self.series(instances)
        zoom = (sz / self.spacing[2], sy / self.spacing[1], sx / self.spacing[0])
        chans = []
        for c, w in self.windows:
            lo = c - w / 2
            chans.append(np.clip((vol - lo) / w, 0, 1).astype(np.float32))
        chans = [ndimage.zoom(ch, zoom, order=1, prefilter=False) for ch in chans]
        nz, ny, nx = chans[0].shape
        rows, cols = self.size
        # centre crop or pad (pad 0) to rows x cols
        def fit(a):
            out = np.zeros((a.shape[0], rows, cols), np.float32)
            oy, ox = (ny - rows) // 2, (nx - cols) // 2
            ys, xs = max(oy, 0), max(ox, 0)
            yd, xd = max(-oy, 0), max(-ox, 0)
            h, w = min(rows - yd, ny - ys), min(cols - xd, nx - xs)
            out[:, yd:yd + h, xd:xd + w] = a[:, ys:ys + h, xs:xs + w]
            return out, (oy, ox)
        fitted = [fit(c) for c in chans]
        off = fitted[0][1]
        chans = [f[0] for f in fitted]
        depth = 2 * self.r + 1
        x = np.empty((nz, len(chans) * depth, rows, cols), np.float32)
        for k in range(nz):
            for c, ch in enumerate(chans):
                for o in range(-self.r, self.r + 1):
                    x[k, c * depth + o + self.r] = ch[min(max(k + o, 0), nz - 1)]
        t1 = time.perf_counter()
        masks, scores = [], []
        for lo in range(0, nz, self.max_batch):
            m, s = self.sess.run(["hemorrhage_logits", "slice_logits"], {"image": x[lo:lo + self.max_batch]})
            masks.append(m)
            scores.append(s)
        t2 = time.perf_counter()
        logits = np.concatenate(masks)[:, 0]  # nz, rows, cols
        # undo the crop or pad onto the resampled grid, then back to the study
        full = np.zeros((nz, ny, nx), np.float32) - 20
        oy, ox = off
        ys, xs = max(oy, 0), max(ox, 0)
        yd, xd = max(-oy, 0), max(-ox, 0)
        h, w = min(rows - yd, ny - ys), min(cols - xd, nx - xs)
        full[:, ys:ys + h, xs:xs + w] = logits[:, yd:yd + h, xd:xd + w]
        back = ndimage.zoom(full, np.array(vol.shape) / np.array(full.shape), order=1, prefilter=False)
        lab = (1 / (1 + np.exp(-back))) >= self.mask_th
        comp, n = ndimage.label(lab, structure=np.ones((3, 3, 3)))
        voxel_mm3 = sz * sy * sx
        if n:
            sizes = np.bincount(comp.ravel())
            small = sizes * voxel_mm3 < self.min_mm3
            small[0] = False
            lab[small[comp]] = False
        volume_ml = float(lab.sum()) * voxel_mm3 / 1000
        prob = float((1 / (1 + np.exp(-np.concatenate(scores)))).max())
        t3 = time.perf_counter()
        us = lambda a, b: int((b - a) * 1e6)
        return pb.InferResponse(
            model="ich", version="1",
            findings=[pb.Finding(label="intracranial hemorrhage", probability=prob, threshold=self.score_th, present=prob >= self.score_th)],
            measurements=[pb.Measurement(name="hemorrhage volume", label="hemorrhage", value=volume_ml, unit="mL")],
            timings=pb.Timings(queue_us=0, preprocess_us=us(t0, t1), inference_us=us(t1, t2), postprocess_us=us(t2, t3), total_us=us(t0, t3)))


class Servicer(pbg.InferenceServicer):
    def __init__(self, model):
        self.model = model

    def Infer(self, request, context):
        if request.model != "ich":
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r}")
        return self.model.infer(list(request.dicom.instances))

    def GetModel(self, request, context):
        return pb.ModelInfo(name="ich", version="1", max_batch_size=32,
                            inputs=[pb.TensorInfo(name="image", data_type=pb.DATA_TYPE_FLOAT32, dims=[-1, 9, 128, 128])])


def main():
    addr = sys.argv[1]
    model = Ich(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "models", "ich"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)])
    pbg.add_InferenceServicer_to_server(Servicer(model), server)
    server.add_insecure_port(addr)
    server.start()
    print(f"peer serving ich on {addr}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
