"""Write an evaluation report's headline figures into a bundle's
provenance.metrics (the block is regenerated; everything else is kept).

usage: update_bundle_metrics.py BUNDLE_YAML REPORT_JSON
"""
import json
import re
import sys


def figures(rep):
    out = {}
    d = rep.get("detection")
    if d:
        out["heldout_auc"] = d["auc"]
        out["heldout_auc_ci95_low"] = d["auc_95ci"][0]
        out["heldout_auc_ci95_high"] = d["auc_95ci"][1]
        out["heldout_sensitivity"] = d["sensitivity"]
        out["heldout_specificity"] = d["specificity"]
    for name, s in sorted((rep.get("dice") or {}).items()):
        out["heldout_dice_" + re.sub(r"\W+", "_", name).strip("_")] = s["mean"]
    for name, e in sorted((rep.get("measurements") or {}).items()):
        key = re.sub(r"\W+", "_", name.split(" (")[0]).strip("_")
        out["heldout_" + key + "_median_rel_error"] = e["median_rel_error"]
        out["heldout_" + key + "_mean_abs_error"] = e["mean_abs_error"]
    out["heldout_cases"] = rep["cases"]
    return out


def main():
    path, report = sys.argv[1], sys.argv[2]
    with open(report) as f:
        rep = json.load(f)
    lines = open(path).read().splitlines()
    # Drop an existing metrics block under provenance.
    out, skip = [], False
    for line in lines:
        if line.startswith("  metrics:"):
            skip = True
            continue
        if skip and line.startswith("    "):
            continue
        skip = False
        out.append(line)
    # The end of the provenance block: its last indented line.
    start = next(k for k, l in enumerate(out) if l.startswith("provenance:"))
    i = start
    while i + 1 < len(out) and out[i + 1].startswith("  "):
        i += 1
    block = ["  metrics:  # written by scripts/eval.sh from models/<name>/eval/report.json"]
    block += [f"    {k}: {v:.6g}" if isinstance(v, float) else f"    {k}: {v}" for k, v in figures(rep).items()]
    out[i + 1:i + 1] = block
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
