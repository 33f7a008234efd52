"""Each benchmark claims its result file before its work (benchmarks/common.py's claim_result): an
earlier result there stops the run at once with a one-line error, unless the benchmark continues its
own file (vdm_claims) or BENCH_OVERWRITE=1. The work itself is replaced by a function that fails the
test, so a check that came only at the final write would be caught."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_loaded: dict = {}


def bench(name: str):
    """benchmarks/<name>.py as a module (it puts benchmarks/ on sys.path for its own `import common`)."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def work_ran(*args, **kwargs):
    raise AssertionError("work ran")


def this_device() -> str:
    return bench("common").environment()["device"]


@pytest.fixture
def out(tmp_path, monkeypatch):
    """BENCH_OUT, no BENCH_OVERWRITE."""
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setenv("BENCH_OUT", str(folder))
    monkeypatch.delenv("BENCH_OVERWRITE", raising=False)
    return folder


def earlier(folder: Path, name: str, device: str | None = None) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"device": device or this_device(), "earlier": True}))
    return path


def refused(run, path: Path) -> None:
    before = path.read_text()
    with pytest.raises(SystemExit, match="already holds a result.*BENCH_OVERWRITE=1") as exc:
        run()
    assert "\n" not in str(exc.value)
    assert path.read_text() == before


def test_guidance_cost_refuses_an_earlier_result_before_loading_models(out, monkeypatch):
    mod = bench("guidance_cost")
    path = earlier(out, "guidance_cost")
    monkeypatch.setattr(mod, "load_model", work_ran)
    monkeypatch.setattr(sys, "argv", ["guidance_cost.py", "--noisy-classifier", "NC", "--guide-model", "GUIDE"])
    refused(mod.main, path)


def test_sample_speed_refuses_an_earlier_result_before_sampling(out, monkeypatch):
    mod = bench("sample_speed")
    path = earlier(out, "sample_speed")
    monkeypatch.setattr(mod, "at_batch", work_ran)
    monkeypatch.setattr(sys, "argv", ["sample_speed.py", "--batch", "4", "--steps", "2", "--repeats", "1",
                                      "--skip-diffusers"])
    refused(mod.main, path)


def test_train_speed_refuses_an_earlier_result_before_training(out, monkeypatch):
    mod = bench("train_speed")
    path = earlier(out, "train_speed")
    monkeypatch.setattr(mod, "_attempt", work_ran)
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--batch", "8", "--steps", "2", "--skip-diffusers"])
    refused(mod.main, path)


def test_toy_guidance_variants_refuses_an_earlier_result_before_sampling(out, monkeypatch):
    mod = bench("toy_guidance_variants")
    path = earlier(out, "toy_guidance_variants")
    monkeypatch.setattr(mod, "gmm3", work_ran)
    refused(lambda: mod.main(["--n", "10"]), path)


def test_vdm_ablation_refuses_an_earlier_result_before_training(out, monkeypatch):
    mod = bench("vdm_ablation")
    path = earlier(out, "vdm_ablation")
    monkeypatch.setattr(mod, "load_dataset", work_ran)  # the config is read first: it names the device
    monkeypatch.setattr(mod, "train_vdm", work_ran)
    refused(lambda: mod.main(["--steps", "1"]), path)


@pytest.mark.parametrize("side", ["both", "ours", "diffusers"])
def test_quality_vs_diffusers_refuses_an_earlier_result_of_its_output(out, monkeypatch, side):
    mod = bench("quality_vs_diffusers")
    path = earlier(out, "quality_vs_diffusers" if side == "both" else f"quality_vs_diffusers_{side}")
    monkeypatch.setattr(mod, "ours", work_ran)
    monkeypatch.setattr(mod, "diffusers_side", work_ran)
    monkeypatch.setattr(sys, "argv", ["quality_vs_diffusers.py", "--side", side, "--minutes", "0.01"])
    refused(mod.main, path)


def test_quality_vs_diffusers_merge_refuses_an_earlier_result_of_the_sides_device(out, tmp_path, monkeypatch):
    """The merge is checked against the device the sides were measured on (a GPU's, merged on any
    machine): the same device's earlier result is refused as an earlier result, not as another device's."""
    mod = bench("quality_vs_diffusers")
    gpu = "NVIDIA Z9000 (the sides' GPU)"
    path = earlier(out, "quality_vs_diffusers", device=gpu)
    sides = []
    for side in ("ours", "diffusers"):
        sides.append(tmp_path / f"quality_vs_diffusers_{side}.json")
        sides[-1].write_text(json.dumps({"device": gpu, "task": {"minutes": 1}, side: {"points": []}}))
    monkeypatch.setattr(mod, "merge", work_ran)
    monkeypatch.setattr(sys, "argv", ["quality_vs_diffusers.py", "--merge", *map(str, sides), "--layout", "test"])
    refused(mod.main, path)


def test_recipe_ablation_merge_refuses_an_earlier_result_of_the_variants_device(out, tmp_path, monkeypatch):
    mod = bench("recipe_ablation")
    gpu = "NVIDIA Z9000 (the variants' GPU)"
    path = earlier(out, "recipe_ablation", device=gpu)
    runs = tmp_path / "abl"
    runs.mkdir()
    (runs / "baseline_s0.json").write_text(json.dumps({
        "device": gpu, "torch": "2", "commit": "abc", "variant": "baseline", "seed": 0, "points": [],
        "task": {"n_per_w": 10, "ddim_steps": 2, "w": [0.0]}}))
    monkeypatch.setattr(mod.fmnist_eval, "write_json", work_ran)
    monkeypatch.setattr(mod, "markdown", work_ran)
    monkeypatch.setattr(sys, "argv", ["recipe_ablation.py", "--merge", str(runs)])
    refused(mod.main, path)
    assert not (out / "recipe_ablation.md").exists()


def test_vdm_claims_refuses_to_replace_a_models_part_before_loading_the_model(out, monkeypatch):
    """vdm_claims continues its own file (one entry per model and part, each with its device): a part
    already there for the same model stops the run before the model loads, unless BENCH_OVERWRITE=1;
    an unusable folder stops it too."""
    mod = bench("vdm_claims")
    path = out / "vdm_claims.json"
    path.write_text(json.dumps({"device": "NVIDIA Z9000", "models": {
        "fmnist-cfg": {"bound_vs_T": {"device": "NVIDIA Z9000"}, "estimator_variance": {"device": "NVIDIA Z9000"}}}}))
    monkeypatch.setattr(mod, "load_vdm", work_ran)
    before = path.read_text()
    with pytest.raises(SystemExit, match="already holds bound_vs_T, estimator_variance of fmnist-cfg.*BENCH_OVERWRITE=1"):
        mod.main(["--tiny"])
    assert path.read_text() == before
    with pytest.raises(SystemExit, match="already holds estimator_variance of fmnist-cfg"):
        mod.main(["--tiny", "--parts", "variance"])
    monkeypatch.setenv("BENCH_OVERWRITE", "1")
    with pytest.raises(AssertionError, match="work ran"):  # told: past the checks
        mod.main(["--tiny"])
    (out / "file").write_text("")
    with pytest.raises(SystemExit, match="cannot create the results folder"):
        mod.main(["--tiny", "--out", str(out / "file" / "sub")])


def test_vdm_claims_continues_its_own_earlier_result(out, monkeypatch):
    mod = bench("vdm_claims")
    (out / "vdm_claims.json").write_text(json.dumps({"device": "NVIDIA Z9000", "models": {
        "another-model": {"bound_vs_T": {"device": "NVIDIA Z9000"}}}}))
    monkeypatch.setattr(mod, "load_vdm", work_ran)
    with pytest.raises(AssertionError, match="work ran"):  # past the claim: another model's parts stay
        mod.main(["--tiny"])


def test_ddgan_refuses_to_replace_a_part_unless_resumed_and_stamps_the_device_it_ran_on(out, monkeypatch, capsys):
    """ddgan.json collects parts over several calls: a part already there is replaced only by a run that
    continues it (--resume) or when told; each saved part says where it was measured, and a --device cpu
    run on a GPU machine says cpu."""
    import torch

    mod = bench("ddgan")
    path = out / "ddgan.json"
    path.write_text(json.dumps({"device": "NVIDIA Z9000", "stacked": {"modes": 1, "kl": 6.9, "n": 10,
                                                                      "measured_on": {"device": "NVIDIA Z9000"}}}))
    monkeypatch.setattr(mod, "part_stacked", work_ran)
    before = path.read_text()
    with pytest.raises(SystemExit, match="already holds stacked, which this run would not continue.*BENCH_OVERWRITE=1") as exc:
        mod.main(["--parts", "stacked", "--device", "cpu"])
    assert "\n" not in str(exc.value) and path.read_text() == before
    # --resume continues only a run that is there, measured on this device: an empty work dir trains afresh
    with pytest.raises(SystemExit, match="already holds stacked, which this run would not continue"):
        mod.main(["--parts", "stacked", "--device", "cpu", "--resume", "--work-dir", str(out / "empty")])
    from guidediff.checkpoint import checkpoint_name

    (out / "work" / "stacked" / "checkpoints" / checkpoint_name(5)).mkdir(parents=True)
    with pytest.raises(SystemExit, match="already holds stacked, which this run would not continue"):  # an H200's part
        mod.main(["--parts", "stacked", "--device", "cpu", "--resume", "--work-dir", str(out / "work")])
    assert path.read_text() == before
    # a new part beside it, measured on the CPU of a machine that has a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Z9000")
    monkeypatch.setattr(mod, "part_gaussians25", lambda *a: {"T": 2, "modes": 25, "high_quality_share": 0.8,
                                                            "runs": [], "n": 10})
    assert mod.main(["--parts", "gaussians25", "--device", "cpu"]) == 0
    saved = json.loads(path.read_text())
    assert saved["gaussians25"]["measured_on"]["device"] == "cpu"
    assert saved["stacked"]["measured_on"]["device"] == "NVIDIA Z9000"
    assert saved["device"].startswith("mixed")
    # numbers and sampler names are checked before any part trains
    with pytest.raises(SystemExit, match="--n-eval must be >= 1"):
        mod.main(["--parts", "fmnist", "--n-eval", "0"])
    with pytest.raises(SystemExit, match="bad sampler config 'nope'"):
        mod.main(["--parts", "gaussians25", "--diffusion-samplers", "nope"])


def test_ddgan_merge_keeps_each_parts_settings_and_drops_the_provenance_of_replaced_parts(out, tmp_path, monkeypatch):
    """A merged ddgan.json says where and how each part was made: the older file's one `settings`
    goes to the parts its call planned, a replaced part's prose provenance goes, and the file's
    device, torch and commit are the parts' own only when every part says the same."""
    mod = bench("ddgan")
    here = {"device": "NVIDIA Z9000", "torch": "9.9", "commit": "abc"}
    older = {"device": "mixed", "settings": {"parts": ["gaussians25"], "toy_T": [2]},
             "gaussians25": {"T": 2, "modes": 25, "high_quality_share": 0.85, "baselines": []},
             "stacked": {"modes": 672, "kl": 1.93, "n": 26000},
             "fmnist": [{"method": "ddgan", "nfe": 2, "fid": 8.3, "fid_floor": 0.02, "recall": 0.13,
                         "sec_per_image": 1e-4, "measured": "an H200"}],
             "provenance": {"gaussians25": "the CPU", "stacked": "arm b", "fmnist": "rows say"}}
    newer = {"device": "NVIDIA Z9000", "torch": "9.9", "commit": "abc", "settings_by_part": {"stacked": {"parts": ["stacked"]}},
             "stacked": {"modes": 984, "kl": 0.59, "n": 26000, "measured_on": here}}
    merged = mod.merge(older, newer)
    assert merged["stacked"]["modes"] == 984 and merged["fmnist"][0]["fid"] == 8.3
    assert merged["provenance"] == {"gaussians25": "the CPU", "fmnist": "rows say"}
    assert merged["settings_by_part"] == {"gaussians25": older["settings"], "stacked": {"parts": ["stacked"]}}
    assert "settings" not in merged
    assert set(mod.file_stamp(merged).values()) == {mod.MIXED}  # older parts carry no measured_on
    same = {"stacked": {"measured_on": here}, "fmnist": [{"method": "ddgan", "nfe": 4, "measured_on": here}]}
    assert mod.file_stamp(same) == here
    other = {**same, "stacked": {"measured_on": {**here, "commit": "def"}}}
    assert mod.file_stamp(other) == {**here, "commit": mod.MIXED}
    # a merge through the command replaces a part only when told, and its figure travels with it
    (tmp_path / "new.json").write_text(json.dumps(newer))
    (tmp_path / "ddgan_stacked.png").write_bytes(b"new figure")
    (out / "ddgan.json").write_text(json.dumps(older))
    with pytest.raises(SystemExit, match="already holds stacked; merge into another --out, or set BENCH_OVERWRITE=1"):
        mod.main(["--merge", str(tmp_path / "new.json"), "--out", str(out)])
    assert json.loads((out / "ddgan.json").read_text()) == older
    monkeypatch.setenv("BENCH_OVERWRITE", "1")
    assert mod.main(["--merge", str(tmp_path / "new.json"), "--out", str(out)]) == 0
    assert (out / "ddgan_stacked.png").read_bytes() == b"new figure"
    # it writes the stamp, not the torch and commit of whichever input came last
    saved = json.loads((out / "ddgan.json").read_text())
    assert saved["torch"] == saved["commit"] == saved["device"] == mod.MIXED


def test_ddgan_tiny_keeps_the_sizes_the_command_line_gave(out, monkeypatch):
    """--tiny shrinks what the command line leaves at its default, not what it names."""
    mod = bench("ddgan")
    seen = {}

    def record(args, work, out_dir, classifier):
        seen.update(vars(args))
        return iter(())

    monkeypatch.setattr(mod, "part_fmnist", record)
    monkeypatch.setattr("guidediff.nets.fmnist_classifier.load_eval_classifier", lambda *a: object())
    assert mod.main(["--tiny", "--parts", "fmnist", "--n-eval", "300", "--fmnist-T", "4", "--device", "cpu"]) == 0
    assert (seen["n_eval"], seen["fmnist_T"]) == (300, [4])
    assert (seen["steps"], seen["batch_size"], seen["minutes"]) == (20, 16, None)


def test_ddgan_refuses_to_replace_a_second_order_samplers_row_named_by_its_steps(out, monkeypatch):
    """A Heun row of 10 steps holds 19 network evaluations in nfe; a rerun of --nfe 10 would replace it."""
    mod = bench("ddgan")
    row = {"method": "diffusion-heun-karras", "nfe": 19, "steps": 10, "fid": 0.5}
    (out / "ddgan.json").write_text(json.dumps({"device": "cpu", "fmnist": [row]}))
    monkeypatch.setattr(mod, "part_diffusion", work_ran)
    with pytest.raises(SystemExit, match="already holds fmnist diffusion-heun-karras nfe=10"):
        mod.main(["--parts", "diffusion", "--diffusion-samplers", "heun-karras", "--nfe", "10", "--device", "cpu"])


def test_recipe_ablation_refuses_a_finished_variant_before_training(out, monkeypatch):
    mod = bench("recipe_ablation")
    path = earlier(out, "baseline_s0")  # a variant's JSON from an earlier call, its run not cut off
    monkeypatch.setattr(mod, "train", work_ran)
    monkeypatch.setattr(sys, "argv", ["recipe_ablation.py", "--variant", "baseline", "--out", str(out), "--steps", "1"])
    refused(mod.main, path)


def test_time_to_quality_refuses_an_earlier_side_result_before_training(out, monkeypatch):
    mod = bench("time_to_quality")
    path = earlier(out, "time_to_quality_new")
    monkeypatch.setattr(mod, "train_ours", work_ran)
    monkeypatch.setattr(sys, "argv", ["time_to_quality.py", "--side", "new", "--out", str(out), "--minutes", "0.01",
                                      "--eval-at", "0.01"])
    refused(mod.main, path)


def test_vdm_claims_stamps_the_file_with_its_parts_not_its_last_writer():
    mod = bench("vdm_claims")
    gpu = {"device": "NVIDIA Z9000", "torch": "2.11.0+cu130", "commit": "abc"}
    one = {"models": {"m": {"bound_vs_T": dict(gpu), "estimator_variance": dict(gpu)}}}
    assert mod.file_stamp(one) == gpu
    both = {"models": {"m": {"bound_vs_T": dict(gpu)}, "tiny": {"bound_vs_T": {"device": "cpu", "torch": "2.13.0+cpu",
                                                                            "commit": "def"}}}}
    assert set(mod.file_stamp(both).values()) == {mod.MIXED}
