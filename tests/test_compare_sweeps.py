"""benchmarks/compare_sweeps.py on small hand-made sweeps whose answers are known."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from guidediff.errors import UsageError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_sweeps.py"
_spec = importlib.util.spec_from_file_location("compare_sweeps", SCRIPT)
cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cs)


def _pt(knob, value, fid, cas, sec, nfe, **extra):
    return {knob: value, "fid": fid, "is": 5.0 + value, "cas": cas, "precision": 0.8, "recall": 0.7,
            "sec_per_image": sec, "nfe_per_image": nfe, "fid_floor": 0.02, "kid": 0.001, **extra}


def _sweep(points, knob="w", device="H100", **top):
    sweep = {"device": device, "torch": "2.13.0", "commit": "abc123", "fid_floor": 0.02, "points": points, **top}
    if knob is not None:
        sweep["knob"] = knob
    return sweep


# Baseline CFG: best FID 0.5 at w=1 with CAS 0.95; unguided (w=0) costs 1.0 s and 50 NFE per image.
CFG = _sweep([_pt("w", 0.0, 1.0, 0.90, 1.0, 50), _pt("w", 2.0, 0.8, 0.99, 2.0, 100), _pt("w", 1.0, 0.5, 0.95, 2.0, 100)])
# interval: best FID 0.4 is at CAS 0.93 < 0.95 (not eligible), but w=2 has FID 0.45 < 0.5 at CAS 0.96 -> beats;
# cheapest point with FID <= 1.05 * 0.5 = 0.525 is w=3 (1.2 s, 60 NFE).
INTERVAL = _sweep([_pt("w", 1.0, 0.4, 0.93, 1.8, 90), _pt("w", 2.0, 0.45, 0.96, 1.6, 80), _pt("w", 3.0, 0.52, 0.99, 1.2, 60)],
                  cfg_variant={"name": "interval"})
# rescale (an old file without "knob"): its lower FID 0.3 is at CAS 0.94 only; at CAS >= 0.95 its best is 0.6 -> no.
RESCALE = _sweep([_pt("w", 0.5, 0.3, 0.94, 3.0, 100), _pt("w", 1.0, 0.6, 0.97, 2.0, 100)], knob=None)
# CG: never within 5 % of 0.5; the guide believes its samples more than the evaluation classifier.
CG = _sweep([_pt("scale", 0.0, 2.0, 0.5, 1.5, 50, guide_accuracy={"accuracy": 0.6, "mean_prob": 0.5, "lam": 20.0}),
             _pt("scale", 5.0, 1.5, 0.7, 3.0, 50, guide_accuracy={"accuracy": 0.95, "mean_prob": 0.9, "lam": 20.0}),
             _pt("scale", 9.0, float("nan"), 0.8, 3.0, 50)],
            knob="scale", guidance="classifier", base="uncond", device="A100")


def _all():
    return {"CFG": ("cfg.json", CFG), "interval": ("i.json", INTERVAL), "rescale": ("r.json", RESCALE), "CG": ("cg.json", CG)}


def test_best_point_is_lowest_fid_per_method():
    result = cs.combine(_all())
    best = result["best"]
    assert best["CFG"]["w"] == 1.0 and best["CFG"]["fid"] == 0.5
    assert best["interval"]["w"] == 1.0 and best["interval"]["fid"] == 0.4
    assert best["rescale"]["w"] == 0.5
    assert best["CG"]["scale"] == 5.0  # the NaN-FID point never wins
    # independent check: brute force over the raw points
    for label, (_, sweep) in _all().items():
        knob = sweep.get("knob", "w")
        raw = min((p for p in sweep["points"] if p["fid"] == p["fid"]), key=lambda p: p["fid"])
        assert best[label][knob] == raw[knob]
    assert result["methods"]["rescale"]["knob"] == "w"
    assert [p["w"] for p in result["methods"]["CFG"]["points"]] == [0.0, 1.0, 2.0]
    assert result["fid_floor"] == 0.02


def test_guide_cas_and_fooling_gap():
    points = cs.combine(_all())["methods"]["CG"]["points"]
    assert points[1]["guide_cas"] == 0.95
    assert points[1]["fooling_gap"] == pytest.approx(0.95 - 0.7)
    assert points[2]["guide_cas"] is None and points[2]["fooling_gap"] is None
    cfg_point = cs.combine(_all())["methods"]["CFG"]["points"][0]
    assert cfg_point["guide_cas"] is None and "kid" not in cfg_point


def test_baseline_checks_on_a_known_case():
    result = cs.combine(_all(), baseline="CFG")
    assert result["baseline"] == "CFG"
    assert result["beats_baseline_best_fid"] == ["interval"]
    check = result["baseline_check"]
    assert check["interval"]["best_fid_at_cas_ge_baseline"] == 0.45 and check["interval"]["at"]["w"] == 2.0
    assert check["rescale"]["best_fid_at_cas_ge_baseline"] == 0.6
    assert check["CFG"]["best_fid_at_cas_ge_baseline"] == 0.5
    assert check["CG"]["best_fid_at_cas_ge_baseline"] is None

    cost = result["cost_vs_unguided_at_near_best_fid"]
    assert cost["fid_target"] == pytest.approx(0.525)
    assert cost["unguided"] == {"sec_per_image": 1.0, "nfe_per_image": 50.0}
    assert cost["same_device"] is False
    m = cost["methods"]
    assert m["interval"]["w"] == 3.0
    assert m["interval"]["sec_ratio"] == pytest.approx(1.2) and m["interval"]["nfe_ratio"] == pytest.approx(1.2)
    assert m["CFG"]["w"] == 1.0 and m["CFG"]["sec_ratio"] == pytest.approx(2.0) and m["CFG"]["nfe_ratio"] == pytest.approx(2.0)
    assert m["rescale"]["w"] == 0.5 and m["rescale"]["sec_ratio"] == pytest.approx(3.0)
    assert m["CG"] is None


def test_baseline_with_another_knob_and_environment():
    result = cs.combine(_all(), baseline="CG")
    # CG's best (FID 1.5, CAS 0.7): every method has a point at CAS >= 0.7 with lower FID, except CG itself
    assert result["beats_baseline_best_fid"] == ["CFG", "interval", "rescale"]
    assert result["cost_vs_unguided_at_near_best_fid"]["unguided"]["sec_per_image"] == 1.5
    assert result["torch"] == "2.13.0" and result["commit"] == "abc123"
    assert result["device"] == ["A100", "H100"]
    assert result["methods"]["CG"]["environment"] == {"device": "A100", "torch": "2.13.0", "commit": "abc123"}
    assert result["methods"]["interval"]["cfg_variant"] == {"name": "interval"}


def test_main_writes_png_json_md(tmp_path, capsys):
    args = []
    for label, (name, sweep) in _all().items():
        (tmp_path / name).write_text(json.dumps(sweep))
        args += ["--sweep", f"{label}={tmp_path / name}"]
    out = tmp_path / "out"
    cs.main(["--name", "cmp", "--out", str(out), "--baseline", "CFG", *args])
    saved = json.loads((out / "cmp.json").read_text())
    assert saved["beats_baseline_best_fid"] == ["interval"]
    assert saved["methods"]["CG"]["source"] == str(tmp_path / "cg.json")
    assert (out / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "cmp.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) == sum(len(s["points"]) for _, s in _all().values())
    assert "| interval | w=2 | 0.450 |" in md
    assert "| CG | scale=5 | 1.500 |" in md and "+0.2500 |" in md
    assert "| method | knob | FID |" in capsys.readouterr().out


def test_earlier_outputs_are_refused_unless_told(tmp_path, monkeypatch):
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    args = ["--name", "cmp", "--out", str(tmp_path / "out"), "--sweep", f"CFG={tmp_path / 'cfg.json'}"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cmp.md").write_text("someone else's table")
    monkeypatch.delenv("BENCH_OVERWRITE", raising=False)
    with pytest.raises(UsageError, match="already holds cmp.md.*BENCH_OVERWRITE=1"):
        cs.main(args)
    assert (tmp_path / "out" / "cmp.md").read_text() == "someone else's table"
    assert not (tmp_path / "out" / "cmp.json").exists()
    monkeypatch.setenv("BENCH_OVERWRITE", "1")
    cs.main(args)
    assert "| method | knob | FID |" in (tmp_path / "out" / "cmp.md").read_text()


def test_sweep_argument_without_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="LABEL=PATH"):
        cs.main(["--name", "x", "--sweep", "CFG benchmarks/results/sweep_fmnist_cfg.json"])
    with pytest.raises(UsageError, match="LABEL=PATH"):
        cs.parse_sweep_arg("=a.json")
    assert cs.parse_sweep_arg("rescale phi=0.7=a.json") == ("rescale phi=0.7", "a.json")


def test_bad_inputs_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        cs.load_sweep(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        cs.load_sweep(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"points": []}))
    with pytest.raises(UsageError, match="no 'points'"):
        cs.load_sweep(tmp_path / "empty.json")
    with pytest.raises(UsageError, match="not one of the sweep labels"):
        cs.combine(_all(), baseline="APG")
    (tmp_path / "c.json").write_text(json.dumps(CFG))
    with pytest.raises(UsageError, match="given twice"):
        cs.main(["--name", "x", "--out", str(tmp_path), "--sweep", f"A={tmp_path / 'c.json'}", "--sweep", f"A={tmp_path / 'c.json'}"])


def test_script_exits_2_with_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--name", "x", "--out", str(tmp_path), "--sweep", f"CFG={tmp_path / 'nope.json'}"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep file") and "nope.json" in lines[0]
