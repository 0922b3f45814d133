"""Train the pneumothorax or the psoas reference bundle on synthetic phantoms.

As for ich (scripts/train_ich.py), the data comes from voxserve itself:
`voxctl phantom` writes DICOM studies with ground truth and `voxctl prepare`
runs the bundle's declared preprocessing, so the network learns on exactly
what the server feeds it.

    python scripts/train_seg.py --task pneumothorax
    python scripts/train_seg.py --task psoas

pneumothorax: chest radiographs, one z-scored channel at 256x256 (1.7 mm);
a 2D UNet with three sigmoid mask channels (pneumothorax, right lung, left
lung: the lungs give the hemithorax for the area fraction) and an image
logit whose threshold is picked on the validation split.
psoas: abdominal CT, 2.5D slabs (3 slices x soft-tissue and muscle
windows) at 1.5 x 1.5 x 3 mm; a 2D UNet with two sigmoid mask channels
(left, right psoas). Slices without psoas are subsampled.

Fixed seeds; runs on the CPU, or on a GPU when there is one (--device).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainlib import UNet, auc, export, phantoms, seg_loss, sensitive_threshold, set_threshold

TRAIN_SEED, VAL_SEED = 100000, 200000

TASKS = {
    "pneumothorax": dict(kind="chest-xr", phantom_args=["--positive-fraction", "0.5"], train=600, val=150, epochs=30,
                         batch=16, base=8, nseg=3, shape=(1, 256, 256), outputs=["mask_logits", "image_logits"],
                         finding="pneumothorax", pos_weight=3.0, keep_empty=1.0),
    "psoas": dict(kind="abdomen-ct", phantom_args=[], train=80, val=16, epochs=12, batch=16, base=8, nseg=2,
                  shape=(6, 256, 256), outputs=["mask_logits"], finding=None, pos_weight=3.0,
                  keep_empty=0.15),
}


def load(cases, keep_empty, rng):
    """Slices as float16 inputs and uint8 label maps; slices with no label
    kept with probability keep_empty. Also the per-case image labels
    (label 1 anywhere) and the slices grouped per case for validation."""
    xs, ys, per_case = [], [], []
    for inp, lab in cases:
        x = np.load(inp).astype(np.float16)
        y = np.load(lab).astype(np.uint8)
        for k in range(len(x)):
            if y[k].any() or rng.random() < keep_empty:
                xs.append(x[k])
                ys.append(y[k])
        per_case.append((x, bool((y == 1).any())))
    return xs, ys, per_case


def batches(xs, ys, nseg, batch, rng, device):
    order = rng.permutation(len(xs))
    for s in range(0, len(order), batch):
        sel = order[s:s + batch]
        x = torch.from_numpy(np.stack([xs[i] for i in sel]).astype(np.float32)).to(device)
        y = torch.from_numpy(np.stack([ys[i] for i in sel]).astype(np.int64)).to(device)
        onehot = F.one_hot(y, nseg + 1)[..., 1:].permute(0, 3, 1, 2).float()
        c = (y == 1).flatten(1).any(1).float()[:, None]
        # Flips would swap left and right: no augmentation but the phantoms' own variation.
        yield x, onehot, c


def case_scores(model, per_case, device):
    model.eval()
    out = []
    with torch.no_grad():
        for x, _ in per_case:
            _, logit = model(torch.from_numpy(x.astype(np.float32)).to(device))
            out.append(float(torch.sigmoid(logit).max()))
    return np.array(out)


def val_dice(model, per_case, cases, nseg, device):
    """Mean Dice per channel over the validation cases, on the model grid."""
    model.eval()
    inter, total = np.zeros(nseg), np.zeros(nseg)
    with torch.no_grad():
        for (x, _), (_, lab) in zip(per_case, cases):
            seg, _ = model(torch.from_numpy(x.astype(np.float32)).to(device))
            p = (torch.sigmoid(seg) >= 0.5).cpu().numpy()
            y = np.load(lab)
            for c in range(nseg):
                inter[c] += (p[:, c] & (y == c + 1)).sum()
                total[c] += p[:, c].sum() + (y == c + 1).sum()
    return 2 * inter / np.maximum(total, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--voxctl", default="bin/voxctl")
    ap.add_argument("--work", default=None, help="data folder (default data/<task>)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-cases", type=int, default=None)
    ap.add_argument("--val-cases", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cfg = dict(TASKS[args.task])
    for k in ("epochs", "train_cases", "val_cases"):
        v = getattr(args, k)
        if v is not None:
            cfg[{"train_cases": "train", "val_cases": "val"}.get(k, k)] = v
    work = args.work or os.path.join("data", args.task)
    bundle = os.path.join("models", args.task)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    train = phantoms(args.voxctl, work, "train", cfg["kind"], TRAIN_SEED, cfg["train"], bundle, cfg["phantom_args"])
    val = phantoms(args.voxctl, work, "val", cfg["kind"], VAL_SEED, cfg["val"], bundle, cfg["phantom_args"])
    xs, ys, _ = load(train, cfg["keep_empty"], rng)
    _, _, vcases = load(val, 1.0, np.random.default_rng(1))
    print(f"data: {len(xs)} train slices from {len(train)} cases, {len(val)} val cases ({time.time()-t0:.0f}s)", flush=True)

    dev = torch.device(args.device)
    model = UNet(cin=cfg["shape"][0], base=cfg["base"], nseg=cfg["nseg"]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = cfg["epochs"] * ((len(xs) + cfg["batch"] - 1) // cfg["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    vlabels = np.array([float(p) for _, p in vcases])
    for epoch in range(cfg["epochs"]):
        model.train()
        total, n = 0.0, 0
        for x, y, c in batches(xs, ys, cfg["nseg"], cfg["batch"], rng, dev):
            seg, logit = model(x)
            loss = seg_loss(seg, y, cfg["pos_weight"])
            if cfg["finding"]:
                loss = loss + F.binary_cross_entropy_with_logits(logit, c)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        line = f"epoch {epoch+1}/{cfg['epochs']}: loss {total/n:.4f}"
        if cfg["finding"]:
            line += f", val AUC {auc(case_scores(model, vcases, dev), vlabels):.4f}"
        print(line + f" ({time.time()-t0:.0f}s)", flush=True)

    dice = val_dice(model, vcases, val, cfg["nseg"], dev)
    metrics = {"val_dice": [round(float(d), 4) for d in dice], "train_seeds": [TRAIN_SEED, TRAIN_SEED + cfg["train"] - 1],
               "val_seeds": [VAL_SEED, VAL_SEED + cfg["val"] - 1], "epochs": cfg["epochs"], "seed": args.seed,
               "device": str(dev), "seconds": round(time.time() - t0)}
    if cfg["finding"]:
        s = case_scores(model, vcases, dev)
        metrics["val_auc"] = auc(s, vlabels)
        metrics["threshold"] = sensitive_threshold(s, vlabels)
        set_threshold(os.path.join(bundle, "bundle.yaml"), cfg["finding"], metrics["threshold"], "scripts/train_seg.py")
    export(model, cfg["shape"], os.path.join(bundle, "1", "model.onnx"), cfg["outputs"])
    with open(os.path.join(work, "train_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
    sys.exit(main())
