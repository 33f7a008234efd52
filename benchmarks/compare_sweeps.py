"""Combine several guidance sweeps (the sweep.json files of `guidediff sweep`) into one comparison:
a figure, a JSON and a Markdown table.

It serves the classifier-guidance head-to-head (CG on the unconditional model, CG on the
conditional model, CFG) and the guidance-variants comparison (plain CFG, guidance interval, CFG
rescale, APG, autoguidance):

    python benchmarks/compare_sweeps.py --name cg_vs_cfg \\
        --sweep "CFG=benchmarks/results/sweep_fmnist_cfg.json" \\
        --sweep "CG uncond=runs/cg_uncond/sweep.json" --sweep "CG cond=runs/cg_cond/sweep.json" \\
        [--out benchmarks/results] [--baseline CFG]

Writes <out>/<name>.png (FID-FMNIST against IS-FMNIST and against CAS, one curve per method, each
point labelled by its knob value, the real-data floor dashed), <out>/<name>.json and <out>/<name>.md
(the table, also printed). Outputs already there are refused before any work unless
BENCH_OVERWRITE=1.

With ``--baseline LABEL`` two goal checks are added (the variants issue's):

- ``beats_baseline_best_fid``: the methods whose lowest FID among their points with
  CAS >= the baseline's CAS at the baseline's best-FID point is strictly below the baseline's best
  FID (better FID at no loss of class accuracy). ``baseline_check`` holds each method's numbers.
- ``cost_vs_unguided_at_near_best_fid``: per method, its cheapest point (lowest sec_per_image)
  whose FID <= 1.05 × the baseline's best FID, with that point's sec_per_image and nfe_per_image
  divided by those of the baseline's unguided point (knob value 0: CFG w = 0 or CG s = 0). None
  when no point comes that close. Wall-clock ratios only mean something when the sweeps ran on
  the same device; ``same_device`` says whether they did.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from guidediff.errors import UsageError, require

RESULTS = Path(__file__).resolve().parent / "results"
NEAR_BEST_FID = 1.05  # "reaches the best FID" allows 5 %: sweeps are noisy at this scale
SLIM_KEYS = ("fid", "is", "cas", "precision", "recall", "sec_per_image", "nfe_per_image")
ENV_KEYS = ("device", "torch", "commit")


def parse_sweep_arg(text: str) -> tuple[str, str]:
    """'LABEL=PATH' -> (label, path); the label may contain spaces and '=' ("rescale phi=0.7"): the
    last '=' splits, so a path must not contain one."""
    label, sep, path = text.rpartition("=")
    label, path = label.strip(), path.strip()
    require(bool(sep) and bool(label) and bool(path),
            f"--sweep {text!r} is not LABEL=PATH; write e.g. --sweep \"CFG=benchmarks/results/sweep_fmnist_cfg.json\"")
    return label, path


def load_sweep(path: str | Path) -> dict:
    """Read one sweep.json and check it has what the comparison needs."""
    p = Path(path)
    require(p.is_file(), f"sweep file {str(p)!r} does not exist; pass the sweep.json written by `guidediff sweep`")
    try:
        sweep = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"sweep file {str(p)!r} is not valid JSON ({e}); pass a sweep.json written by `guidediff sweep`") from None
    require(isinstance(sweep, dict) and isinstance(sweep.get("points"), list) and sweep["points"],
            f"sweep file {str(p)!r} has no 'points'; is it a sweep.json from `guidediff sweep`?")
    knob = knob_of(sweep)
    for point in sweep["points"]:
        require(isinstance(point, dict) and knob in point and "fid" in point,
                f"a point in {str(p)!r} lacks {knob!r} or 'fid'; the file is not a complete sweep.json")
    return sweep


def knob_of(sweep: dict) -> str:
    """The swept knob: 'w' (CFG and variants) or 'scale' (classifier guidance); old files say neither."""
    return sweep.get("knob") or "w"


def _number(value) -> float | None:
    """A finite float, or None for missing/NaN values (so they never win a min())."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def slim_point(point: dict, knob: str) -> dict:
    """The fields the comparison reports. ``guide_cas`` is the guiding classifier's accuracy on
    the samples (classifier_guidance.guide_accuracy), ``fooling_gap`` = guide_cas − cas: how much
    more the guide believes the samples than the evaluation classifier does."""
    slim = {knob: float(point[knob])}
    for key in SLIM_KEYS:
        slim[key] = _number(point.get(key))
    accuracy = point.get("guide_accuracy")
    guide_cas = _number(accuracy.get("accuracy")) if isinstance(accuracy, dict) else None
    slim["guide_cas"] = guide_cas
    slim["fooling_gap"] = None if guide_cas is None or slim["cas"] is None else guide_cas - slim["cas"]
    return slim


def best_point(points: list[dict]) -> dict | None:
    """The point with the lowest FID (None when no point has one)."""
    scored = [p for p in points if p.get("fid") is not None]
    return min(scored, key=lambda p: p["fid"]) if scored else None


def method_entry(source: str, sweep: dict) -> dict:
    knob = knob_of(sweep)
    entry = {"source": str(source), "knob": knob, "fid_floor": _number(sweep.get("fid_floor"))}
    for key in ("guidance", "base", "cg_form", "cfg_variant", "guide_model", "model", "steps", "sampler", "n_per_w"):
        if sweep.get(key) is not None:
            entry[key] = sweep[key]
    entry["environment"] = {key: sweep.get(key) for key in ENV_KEYS}
    entry["points"] = sorted((slim_point(p, knob) for p in sweep["points"]), key=lambda p: p[knob])
    return entry


def baseline_checks(methods: dict[str, dict], baseline: str) -> dict:
    """The two goal checks against ``baseline`` (see the module docstring for their definitions)."""
    require(baseline in methods, f"--baseline {baseline!r} is not one of the sweep labels {sorted(methods)}; pass one of them")
    base = methods[baseline]
    base_best = best_point(base["points"])
    require(base_best is not None, f"the baseline {baseline!r} has no point with an FID; pick another --baseline")
    base_cas = base_best["cas"]

    check, beats = {}, []
    for label, entry in methods.items():
        knob = entry["knob"]
        eligible = [p for p in entry["points"] if p["fid"] is not None and p["cas"] is not None
                    and (base_cas is None or p["cas"] >= base_cas)]
        best = best_point(eligible)
        check[label] = {
            "best_fid_at_cas_ge_baseline": None if best is None else best["fid"],
            "at": None if best is None else {knob: best[knob], "cas": best["cas"]},
        }
        if best is not None and best["fid"] < base_best["fid"]:
            beats.append(label)

    unguided = [p for p in base["points"] if p[base["knob"]] == 0.0]
    unguided = unguided[0] if unguided else None
    target = NEAR_BEST_FID * base_best["fid"]
    cost = {}
    for label, entry in methods.items():
        knob = entry["knob"]
        near = [p for p in entry["points"] if p["fid"] is not None and p["fid"] <= target
                and (p["sec_per_image"] is not None or p["nfe_per_image"] is not None)]
        if not near:
            cost[label] = None
            continue
        # a sweep without trustworthy timings (sec_per_image None) is ranked by its NFE
        cheap = min(near, key=lambda p: (p["sec_per_image"] is None, p["sec_per_image"] or 0.0,
                                         p["nfe_per_image"] or 0.0, p["fid"]))
        cost[label] = {
            knob: cheap[knob],
            "fid": cheap["fid"],
            "sec_per_image": cheap["sec_per_image"],
            "nfe_per_image": cheap["nfe_per_image"],
            "sec_ratio": _ratio(cheap["sec_per_image"], unguided and unguided["sec_per_image"]),
            "nfe_ratio": _ratio(cheap["nfe_per_image"], unguided and unguided["nfe_per_image"]),
        }
    devices = {entry["environment"]["device"] for entry in methods.values()}
    return {
        "baseline_best": {**base_best, "knob": base["knob"]},
        "beats_baseline_best_fid": beats,
        "baseline_check": check,
        "cost_vs_unguided_at_near_best_fid": {
            "definition": (f"per method, its cheapest point (sec_per_image, else NFE when untimed) with FID <= {NEAR_BEST_FID} x the baseline's best "
                           "FID; ratios are to the baseline's unguided point (knob 0)"),
            "fid_target": target,
            "unguided": None if unguided is None else {"sec_per_image": unguided["sec_per_image"], "nfe_per_image": unguided["nfe_per_image"]},
            "same_device": len(devices) == 1,
            "methods": cost,
        },
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def combine(sweeps: dict[str, tuple[str, dict]], baseline: str | None = None) -> dict:
    """The comparison as a JSON-ready dict. ``sweeps`` maps a label to (source path, sweep dict)."""
    require(len(sweeps) > 0, "no sweeps to compare; pass --sweep LABEL=PATH at least once")
    methods = {label: method_entry(source, sweep) for label, (source, sweep) in sweeps.items()}
    floors = [e["fid_floor"] for e in methods.values() if e["fid_floor"] is not None]
    first = methods[baseline] if baseline in methods else next(iter(methods.values()))
    result = {
        "methods": methods,
        "fid_floor": first["fid_floor"] if first["fid_floor"] is not None else (floors[0] if floors else None),
        "best": {label: best_point(e["points"]) for label, e in methods.items()},
        "baseline": baseline,
    }
    # top level as the other results files have it: one value where all sweeps agree, else the list
    for key in ENV_KEYS:
        values = sorted({str(e["environment"][key]) for e in methods.values()})
        result[key] = values[0] if len(values) == 1 else values
    if baseline is not None:
        result.update(baseline_checks(methods, baseline))
    return result


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(result: dict) -> str:
    """One row per (method, knob value), then the best points and the baseline checks."""
    lines = [
        f"FID-FMNIST real-data floor: {_fmt(result['fid_floor'], '.3f')}",
        "",
        "| method | knob | FID | IS | CAS | P | R | ms/img | NFE/img | guide CAS | gap |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, entry in result["methods"].items():
        knob = entry["knob"]
        for p in entry["points"]:
            ms = None if p["sec_per_image"] is None else 1e3 * p["sec_per_image"]
            lines.append(
                f"| {label} | {knob}={p[knob]:g} | {_fmt(p['fid'], '.3f')} | {_fmt(p['is'], '.3f')} | {_fmt(p['cas'], '.4f')} "
                f"| {_fmt(p['precision'], '.3f')} | {_fmt(p['recall'], '.3f')} | {_fmt(ms, '.3f')} | {_fmt(p['nfe_per_image'], 'g')} "
                f"| {_fmt(p['guide_cas'], '.4f')} | {_fmt(p['fooling_gap'], '+.4f')} |"
            )
    lines.append("")
    for label, p in result["best"].items():
        if p is not None:
            knob = result["methods"][label]["knob"]
            lines.append(f"- best FID of {label}: {p['fid']:.3f} at {knob}={p[knob]:g} (CAS {_fmt(p['cas'], '.4f')})")
    if result.get("baseline") is not None:
        b = result["baseline_best"]
        cost = result["cost_vs_unguided_at_near_best_fid"]
        beats = ", ".join(result["beats_baseline_best_fid"]) or "none"
        lines.append(f"- beat {result['baseline']}'s best FID {b['fid']:.3f} at CAS >= {_fmt(b['cas'], '.4f')}: {beats}")
        for label, c in cost["methods"].items():
            if c is None:
                lines.append(f"- {label}: no point reaches FID <= {cost['fid_target']:.3f}")
            else:
                knob = result["methods"][label]["knob"]
                lines.append(f"- {label}: cheapest point with FID <= {cost['fid_target']:.3f} is {knob}={c[knob]:g}, "
                             f"cost vs unguided {_fmt(c['sec_ratio'], '.2f')}x time, {_fmt(c['nfe_ratio'], '.2f')}x NFE")
        if not cost["same_device"]:
            lines.append("- note: the sweeps ran on different devices; the time ratios compare across them")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | Path) -> Path:
    """FID against IS and against CAS, one curve per method, points labelled by knob value."""
    from guidediff.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    fids = [p["fid"] for e in result["methods"].values() for p in e["points"] if p["fid"] is not None]
    floor = result["fid_floor"]
    log = bool(fids) and min(fids) > 0 and (floor is None or floor > 0)
    for ax, (key, xlabel) in zip(axes, [("is", "IS-FMNIST (higher is better)"), ("cas", "class accuracy of samples (CAS)")]):
        for i, (label, entry) in enumerate(result["methods"].items()):
            knob = entry["knob"]
            pts = [p for p in entry["points"] if p["fid"] is not None and p[key] is not None]
            line, = ax.plot([p[key] for p in pts], [p["fid"] for p in pts], marker="o", label=f"{label} ({knob})")
            # alternate labels above/below so close curves stay readable
            offset = (3, 3) if i % 2 == 0 else (3, -10)
            for p in pts:
                ax.annotate(f"{p[knob]:g}", (p[key], p["fid"]), fontsize=7, xytext=offset, textcoords="offset points",
                            color=line.get_color())
        if floor is not None:
            ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"real-data floor {floor:.3f}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID-FMNIST (lower is better)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out = Path(out_dir)
    return {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}


def write_outputs(result: dict, out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write <name>.json, <name>.md and <name>.png into out_dir; returns their paths."""
    from guidediff.checkpoint import write_text_atomic

    paths = output_paths(out_dir, name)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths["json"], json.dumps(result, indent=2) + "\n")
    write_text_atomic(paths["md"], markdown_table(result))
    plot(result, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="file stem of the outputs, e.g. cg_vs_cfg")
    parser.add_argument("--sweep", action="append", required=True, metavar="LABEL=PATH",
                        help="a method's label and its sweep.json; repeat per method (order = legend order)")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT") or str(RESULTS),
                        help="output folder (default $BENCH_OUT, else benchmarks/results)")
    parser.add_argument("--baseline", default=None, help="label of the method the goal checks compare against")
    args = parser.parse_args(argv)
    require(bool(args.name.strip()) and "/" not in args.name, f"--name {args.name!r} must be a plain file stem; e.g. --name cg_vs_cfg")

    sweeps: dict[str, tuple[str, dict]] = {}
    for text in args.sweep:
        label, path = parse_sweep_arg(text)
        require(label not in sweeps, f"the label {label!r} is given twice; give each --sweep its own label")
        sweeps[label] = (path, load_sweep(path))
    existing = [p.name for p in output_paths(args.out, args.name).values() if p.exists()]
    require(not existing or os.environ.get("BENCH_OVERWRITE") == "1",
            f"{args.out} already holds {', '.join(existing)}; choose another --out or --name, or set BENCH_OVERWRITE=1 "
            "to replace them")
    result = combine(sweeps, args.baseline)
    paths = write_outputs(result, args.out, args.name)
    print(paths["md"].read_text(), end="")
    print(f"wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    return result


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
