"""The PyTorch peer of kernels' BenchmarkGPUPreprocess: the same 512x512x300
int16 CT (0.488 x 0.488 x 0.625 mm), rescaled, resampled to 1 mm,
250x250x188 (trilinear) and windowed into
float32 channels, the idiomatic way (what MONAI's ScaleIntensityRange and
Spacing amount to on a GPU tensor), timed with CUDA events, median of 50
after warm-up. Prints one JSON line per channel count.

Run on a GPU machine: python3 bench/gpu_preprocess_torch.py
"""
import json

import torch
import torch.nn.functional as F

OUT = (188, 250, 250)
WINDOWS = [(40, 80), (80, 200), (600, 2800)]


def preprocess(raw, channels):
    hu = raw.float() * 1.0 - 1024.0
    r = F.interpolate(hu[None, None], size=OUT, mode="trilinear", align_corners=True)[0, 0]
    out = []
    for c, w in WINDOWS[:channels]:
        lo = c - w / 2
        out.append(((r - lo) / w).clamp_(0, 1))
    return torch.stack(out)


def timed(f, reps=50):
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    g = torch.Generator(device="cuda").manual_seed(1)
    raw = torch.randint(0, 3000, (300, 512, 512), dtype=torch.int16, device="cuda", generator=g)
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").fill_(7)
    dst = torch.empty_like(src)
    copy_ms = timed(lambda: dst.copy_(src), 20)
    for channels in (1, 3):
        ms = timed(lambda: preprocess(raw, channels))
        moved = raw.numel() * 2 + channels * OUT[0] * OUT[1] * OUT[2] * 4
        print(json.dumps({
            "peer": "pytorch " + torch.__version__, "device": torch.cuda.get_device_name(),
            "channels": channels, "device_ms": round(ms, 4),
            "gbs": round(moved / (ms * 1e6), 1), "copy_gbs": round(2 * n / (copy_ms * 1e6), 1),
        }))


if __name__ == "__main__":
    main()
