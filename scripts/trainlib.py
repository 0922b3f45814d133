"""What the reference bundles' training scripts share: data from voxserve's
own phantom generator and preprocessing, a small 2D UNet with an image
classification head, the AUC, threshold picking, and ONNX export."""
import os
import subprocess

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def phantoms(voxctl, work, name, kind, seed, count, bundle, phantom_args):
    """Writes count phantoms (seeds seed..seed+count-1) under work/name/raw
    and runs the bundle's preprocessing on them into work/name/prepared;
    returns the prepared cases as (input path, labels path) pairs."""
    raw = os.path.join(work, name, "raw")
    prep = os.path.join(work, name, "prepared")
    if not os.path.isdir(prep) or len([f for f in os.listdir(prep) if f.endswith(".input.npy")]) < count:
        run([voxctl, "phantom", "--kind", kind, "--out", raw, "--seed", str(seed), "--count", str(count), "--quiet"] + phantom_args)
        cases = sorted(os.path.join(raw, d) for d in os.listdir(raw))
        run([voxctl, "prepare", "--bundle", bundle, "--out", prep] + cases)
    out = []
    for f in sorted(os.listdir(prep)):
        if f.endswith(".input.npy"):
            out.append((os.path.join(prep, f), os.path.join(prep, f.replace(".input.npy", ".labels.npy"))))
    return out


def conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A four-level 2D UNet with nseg mask channels and, on the bottleneck
    and the first mask channel's strongest pixel, an image logit."""

    def __init__(self, cin=9, base=8, nseg=1):
        super().__init__()
        c = [base, base * 2, base * 4, base * 8]
        self.e1, self.e2, self.e3, self.e4 = conv(cin, c[0]), conv(c[0], c[1]), conv(c[1], c[2]), conv(c[2], c[3])
        self.u3, self.d3 = nn.ConvTranspose2d(c[3], c[2], 2, stride=2), conv(c[3], c[2])
        self.u2, self.d2 = nn.ConvTranspose2d(c[2], c[1], 2, stride=2), conv(c[2], c[1])
        self.u1, self.d1 = nn.ConvTranspose2d(c[1], c[0], 2, stride=2), conv(c[1], c[0])
        self.seg = nn.Conv2d(c[0], nseg, 1)
        self.cls = nn.Linear(c[3] + 1, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        e4 = self.e4(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([self.u3(e4), e3], 1))
        d2 = self.d2(torch.cat([self.u2(d3), e2], 1))
        d1 = self.d1(torch.cat([self.u1(d2), e1], 1))
        seg = self.seg(d1)
        # The image score sees the bottleneck and the strongest pixel evidence.
        feat = torch.cat([F.adaptive_avg_pool2d(e4, 1).flatten(1), F.adaptive_max_pool2d(seg[:, :1], 1).flatten(1)], 1)
        return seg, self.cls(feat)


class MaskOnly(nn.Module):
    """Exports a UNet's mask output alone, for bundles without a score."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


def seg_loss(seg, y, pos_weight):
    """Per-channel BCE plus soft Dice; y is one-hot [N, C, H, W]."""
    bce = F.binary_cross_entropy_with_logits(seg, y, pos_weight=torch.full((seg.shape[1], 1, 1), pos_weight, device=seg.device))
    p = torch.sigmoid(seg)
    dims = (0, 2, 3)
    dice = 1 - (2 * (p * y).sum(dims) + 1) / (p.sum(dims) + y.sum(dims) + 1)
    return bce + dice.mean()


def auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))


def sensitive_threshold(scores, labels, sensitivity=0.95):
    """The highest threshold that keeps the given sensitivity on a split:
    a triage tool must not miss findings."""
    pos = np.sort(scores[labels == 1])
    t = float(pos[int(np.floor((1 - sensitivity) * len(pos)))]) if len(pos) else 0.5
    return min(max(t, 0.05), 0.95)


def set_threshold(path, label, value, script):
    """Writes the threshold picked on the validation split into bundle.yaml,
    on the last label of that name (the scores output follows the mask)."""
    lines = open(path).read().splitlines()
    i = max(k for k, l in enumerate(lines) if l.strip() == "- name: " + label)
    for k in range(i + 1, len(lines)):
        if lines[k].strip().startswith("threshold:"):
            indent = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
            lines[k] = f"{indent}threshold: {value:.4f}  # picked on the validation split by {script}"
            break
    open(path, "w").write("\n".join(lines) + "\n")


def export(model, shape, path, outputs):
    """ONNX, opset 17, dynamic batch axis, fixed spatial shape."""
    model.eval().cpu()
    if len(outputs) == 1:
        model = MaskOnly(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dummy = torch.zeros(2, *shape)
    axes = {n: {0: "batch"} for n in ["image"] + outputs}
    torch.onnx.export(model, (dummy,), path, input_names=["image"], output_names=outputs, dynamic_axes=axes,
                      opset_version=17, dynamo=False)
