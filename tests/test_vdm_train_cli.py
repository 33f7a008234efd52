"""`guidediff train --config configs/fmnist_vdm_tiny.toml` trains the VDM its [vdm] table describes
(the config decides the method), resumes it, and `guidediff bpd` / `guidediff sample` take the run
directory like any model's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train_helpers import ROOT, tiny_folder

pytestmark = pytest.mark.slow

VDM_TINY = ROOT / "configs" / "fmnist_vdm_tiny.toml"


def test_train_resume_bpd_sample_a_vdm(tmp_path, monkeypatch, capsys):
    from guidediff.checkpoint import load_checkpoint
    from guidediff.cli import main
    from guidediff.vdm.model import config_from_tensors

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tiny_folder(tmp_path / "images")
    run = tmp_path / "run"
    common = ["--out", str(run), "--no-progress", "--set", f"data.name={folder}", "--set", "data.resolution=8",
              "--set", "data.channels=1", "--set", "sample.steps=1", "--set", "sample.n=1"]
    assert main(["train", "--config", str(VDM_TINY), *common, "--max-steps", "2",
                 "--set", "vdm.schedule_hidden=8", "--set", "vdm.fourier_n_max=7"]) == 0
    ck = load_checkpoint(run / "checkpoints" / "ckpt-0000002", parts=("model",))
    vdm = config_from_tensors(ck.tensors["model"])
    assert vdm is not None and vdm.schedule == "learned" and vdm.schedule_hidden == 8 and vdm.fourier_n_max == 7
    assert any(k.startswith("schedule.") for k in ck.tensors["model"])  # the learned schedule trained with it
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert 0 < log[-1]["loss"] < 30  # bits/dim of 8-bit data, not the ε-MSE of CFG (about 1)
    assert list((run / "samples").glob("*_vdm_*.png"))

    # resume: the VDM comes back from the checkpoint's weights, no --config needed
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    assert (run / "checkpoints" / "ckpt-0000003").is_dir()

    capsys.readouterr()
    assert main(["bpd", str(run), "--split", "train", "--n", "8", "--device", "cpu"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--classes", "0,2", "--w", "0,1", "--n", "1", "--steps", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (4, 8, 8, 1) and data["x"].dtype == np.uint8
    assert list(data["y"]) == [0, 2, 0, 2]
    capsys.readouterr()
    assert main(["distill", str(run), "--out", str(tmp_path / "student"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a VDM" in err and "\n" not in err


def test_plain_config_still_trains_cfg(tmp_path):
    from guidediff.vdm.training import has_vdm_table, vdm_for_run

    assert has_vdm_table(VDM_TINY) and not has_vdm_table(ROOT / "configs" / "tiny_test.toml")
    assert vdm_for_run(ROOT / "configs" / "tiny_test.toml", [], tmp_path, resume=False) is None
    vdm = vdm_for_run(VDM_TINY, ["vdm.schedule=cosine", "train.lr=1e-4"], tmp_path, resume=False)
    assert vdm.schedule == "cosine"
    with pytest.raises(Exception, match="unknown vdm config key"):
        vdm_for_run(VDM_TINY, ["vdm.shedule=cosine"], tmp_path, resume=False)
