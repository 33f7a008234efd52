"""One self-contained HTML page for a run directory: figures, sample grids, metric tables,
config and device, every image embedded as a data URI so the file can be mailed or archived."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from guidediff.errors import UsageError, require

_METRIC_COLUMNS = ["w", "fid", "fid_floor", "kid", "is", "cas", "precision", "recall", "sec_per_image", "nfe_per_image", "n"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} figure{display:inline-block;margin:.5em} figcaption{font-size:.8em;color:#555}
img{max-width:100%;image-rendering:pixelated} pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""

# Marks the body once every image has decoded, so a headless browser (and the test) can check it.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[str]) -> str:
    present = [c for c in columns if any(c in r for r in rows)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in present)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in present) + "</tr>" for r in rows)
    return f'<table class="metrics"><tr>{head}</tr>{body}</table>'


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _discriminator_section(run: Path, data_dir: str | Path | None) -> list[str]:
    """For a DDGAN run with a checkpoint: its discriminator's accuracy per level t on training pairs
    (ddgan.diagnostics), or one line saying why it could not be measured."""
    from guidediff.checkpoint import latest_checkpoint
    from guidediff.ddgan.detect import is_ddgan_source

    if not is_ddgan_source(run) or latest_checkpoint(run / "checkpoints") is None:
        return []
    from guidediff.ddgan.diagnostics import discriminator_report

    import torch

    # 512 pairs take seconds on a GPU; on the CPU the full-size Fashion-MNIST networks need about
    # 90 s for them, so the report takes 128 there
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 512 if device == "cuda" else 128
    head = ["<h2>Discriminator by level</h2>"]
    try:
        rows = discriminator_report(run, n=n, device=device, data_dir=data_dir)
    except UsageError as exc:
        return head + [f"<p>Not measured: {html.escape(str(exc))}</p>"]
    return head + [
        f"<p>The latest checkpoint's raw G and D on {n} training images ({device}): D's mean logits on real and "
        "generated pairs (x<sub>t−1</sub>, x<sub>t</sub>) at each level t, its accuracy at threshold 0 (which "
        "depends on D's offset), and its AUC, the chance that a real pair scores above a generated one (0.5: D "
        "ranks them alike, which a weak D and a good G both give, so read it beside the samples; below 0.5 it "
        "prefers the generated pairs).</p>",
        _table(rows, ["t", "lam", "d_real", "d_fake", "accuracy", "auc"]),
    ]


def write_report(run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """Write ``report.html`` for a run directory (training run, sweep or eval output). data_dir: the
    dataset folder for a DDGAN run's discriminator check, when not where the run found it."""
    from guidediff import plots

    run = Path(run_dir)
    require(run.is_dir(), f"{run} is not a directory; pass the run or sweep output directory")
    parts = [f"<h1>guidediff report: {html.escape(run.name or str(run))}</h1>"]

    sweep_path = run / "sweep.json"
    if sweep_path.exists():
        try:
            sweep = json.loads(sweep_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{sweep_path} is not valid JSON ({type(exc).__name__}); run the sweep again with "
                             "--resume to rewrite it, or remove the file") from None
        require(isinstance(sweep, dict) and isinstance(sweep.get("points", []), list)
                and all(isinstance(p, dict) for p in sweep.get("points", [])),
                f"{sweep_path} is not a guidediff sweep (no list of points); remove it or run the sweep again")
        parts.append("<h2>Guidance sweep</h2>")
        parts.append(
            f"<p>model <code>{_fmt(sweep.get('model'))}</code>, {_fmt(sweep.get('n_per_w'))} images per w, "
            f"{_fmt(sweep.get('sampler'))} with {_fmt(sweep.get('steps'))} steps, device {_fmt(sweep.get('device'))}, "
            f"torch {_fmt(sweep.get('torch'))}. Real-data FID floor (10k train vs test): {_fmt(sweep.get('fid_floor'))}.</p>"
        )
        parts.append(_table(sweep.get("points", []), _METRIC_COLUMNS))

    evals = []
    for path in sorted(run.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and "fid" in data and "points" not in data:
            evals.append({"file": path.name, **data})
    if evals:
        parts.append("<h2>Evaluations</h2>")
        parts.append(_table(evals, ["file", *_METRIC_COLUMNS[1:]]))

    log = run / "log.jsonl"
    figures = []
    if log.exists():
        records = _read_jsonl(log)
        if any("loss" in r for r in records):
            curve = run / "training_curve.png"
            plots.training_curve(records, curve)
        if any("loss_d" in r for r in records):
            plots.ddgan_curves(records, run / "ddgan_training.png")
    for path in sorted(run.glob("*.png")) + sorted((run / "samples").glob("*.png"))[-4:]:
        figures.append(_img(path, path.relative_to(run).as_posix()))
    if figures:
        parts.append("<h2>Figures and samples</h2>")
        parts.extend(figures)

    parts.extend(_discriminator_section(run, data_dir))

    config = run / "config.json"
    if config.exists():
        parts.append("<h2>Config</h2>")
        parts.append(f"<pre>{html.escape(config.read_text())}</pre>")

    require(len(parts) > 1, f"{run} holds nothing to report (no sweep.json, evaluation .json, log.jsonl, figures or "
                            "config.json); pass a run, sweep or eval output directory")
    target = Path(out) if out else run / "report.html"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>guidediff report</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>{''.join(parts)}</body></html>"
    )
    target.write_text(page, encoding="utf-8")
    return target
