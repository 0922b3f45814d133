"""Train the ich reference bundle on synthetic head CT phantoms.

The data comes from voxserve itself: `voxctl phantom` writes DICOM studies
with ground truth and `voxctl prepare` runs the bundle's declared
preprocessing (windows, resampling, 2.5D slabs) on them, so the network
learns on exactly what the server will feed it.

    python scripts/train_ich.py --voxctl bin/voxctl --work data/ich --out models/ich/1/model.onnx

Model: a small 2.5D UNet (9 input channels: 3 slices x brain/subdural/bone
windows) with a per-slice classification head on the bottleneck. Outputs:
hemorrhage_logits [N, 1, 128, 128] and slice_logits [N, 1] (the bundle
applies the sigmoid). Fixed seeds; the split seeds are recorded in the
returned metrics. The decision thresholds are picked on the validation
split, never on the held-out seeds used by the evaluation.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainlib import UNet, auc, export, run, set_threshold

TRAIN_SEED, VAL_SEED = 100000, 200000


def make_split(voxctl, work, name, seed, count, bundle):
    raw = os.path.join(work, name, "raw")
    prep = os.path.join(work, name, "prepared")
    if not os.path.isdir(prep) or len([f for f in os.listdir(prep) if f.endswith(".input.npy")]) < count:
        run([voxctl, "phantom", "--kind", "head-ct", "--out", raw, "--seed", str(seed), "--count", str(count),
             "--matrix", "128", "--positive-fraction", "0.6", "--quiet"])
        cases = sorted(os.path.join(raw, d) for d in os.listdir(raw))
        run([voxctl, "prepare", "--bundle", bundle, "--out", prep] + cases)
    xs, ys, cls = [], [], []
    for f in sorted(os.listdir(prep)):
        if not f.endswith(".input.npy"):
            continue
        x = np.load(os.path.join(prep, f))
        y = np.load(os.path.join(prep, f.replace(".input.npy", ".labels.npy")))
        xs.append(np.round(x * 255).astype(np.uint8))  # windows are in [0, 1]
        ys.append((y > 0).astype(np.uint8))
        cls.append((y.reshape(len(y), -1).max(axis=1) > 0).astype(np.float32))
    return xs, ys, cls


def batches(xs, ys, cls, batch, rng, balanced):
    idx = [(i, k) for i in range(len(xs)) for k in range(len(xs[i]))]
    if balanced:
        pos = [t for t in idx if cls[t[0]][t[1]] > 0]
        neg = [t for t in idx if cls[t[0]][t[1]] == 0]
        neg = [neg[j] for j in rng.choice(len(neg), size=min(len(neg), (3 * len(pos)) // 2), replace=False)]
        idx = pos + neg
    order = rng.permutation(len(idx))
    for s in range(0, len(order), batch):
        sel = [idx[j] for j in order[s:s + batch]]
        x = np.stack([xs[i][k] for i, k in sel]).astype(np.float32) / 255
        y = np.stack([ys[i][k] for i, k in sel])[:, None].astype(np.float32)
        c = np.array([cls[i][k] for i, k in sel], dtype=np.float32)[:, None]
        yield torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(c)


def loss_fn(seg, logit, y, c):
    bce = F.binary_cross_entropy_with_logits(seg, y, pos_weight=torch.tensor(5.0))
    p = torch.sigmoid(seg)
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    return bce + dice + F.binary_cross_entropy_with_logits(logit, c)


def study_scores(model, xs):
    model.eval()
    out = []
    with torch.no_grad():
        for x in xs:
            _, logit = model(torch.from_numpy(x.astype(np.float32) / 255))
            out.append(float(torch.sigmoid(logit).max()))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxctl", default="bin/voxctl")
    ap.add_argument("--work", default="data/ich")
    ap.add_argument("--bundle", default="models/ich")
    ap.add_argument("--out", default="models/ich/1/model.onnx")
    ap.add_argument("--train-cases", type=int, default=120)
    ap.add_argument("--val-cases", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    xs, ys, cls = make_split(args.voxctl, args.work, "train", TRAIN_SEED, args.train_cases, args.bundle)
    vxs, vys, vcls = make_split(args.voxctl, args.work, "val", VAL_SEED, args.val_cases, args.bundle)
    print(f"data: {sum(len(x) for x in xs)} train slices, {sum(len(x) for x in vxs)} val slices ({time.time()-t0:.0f}s)", flush=True)

    model = UNet(cin=9, base=8, nseg=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * sum(1 for _ in batches(xs, ys, cls, args.batch, np.random.default_rng(1), True))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    vlabels = np.array([float(c.max()) for c in vcls])
    for epoch in range(args.epochs):
        model.train()
        total, n = 0.0, 0
        for x, y, c in batches(xs, ys, cls, args.batch, rng, True):
            seg, logit = model(x)
            loss = loss_fn(seg, logit, y, c)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        s = study_scores(model, vxs)
        print(f"epoch {epoch+1}/{args.epochs}: loss {total/n:.4f}, val study AUC {auc(s, vlabels):.4f} ({time.time()-t0:.0f}s)", flush=True)

    # Threshold on the validation split: the highest that keeps sensitivity
    # at 0.95 or more (a triage tool must not miss bleeds).
    s = study_scores(model, vxs)
    pos = np.sort(s[vlabels == 1])
    threshold = float(pos[int(np.floor(0.05 * len(pos)))]) if len(pos) else 0.5
    threshold = min(max(threshold, 0.05), 0.95)
    metrics = {"val_study_auc": auc(s, vlabels), "threshold": threshold, "train_seeds": [TRAIN_SEED, TRAIN_SEED + args.train_cases - 1],
               "val_seeds": [VAL_SEED, VAL_SEED + args.val_cases - 1], "epochs": args.epochs, "seed": args.seed}

    export(model, (9, 128, 128), args.out, ["hemorrhage_logits", "slice_logits"])
    with open(os.path.join(args.work, "train_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    set_threshold(os.path.join(args.bundle, "bundle.yaml"), "intracranial hemorrhage", threshold, "scripts/train_ich.py")
    print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
    sys.exit(main())
