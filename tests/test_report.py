"""The HTML report renders in headless Chromium with every image loaded and the metric table present."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from guidediff import plots
from guidediff.cli import main
from guidediff.report import write_report


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def sweep_dir(tmp_path):
    points = [
        {"w": w, "fid": 10 - w, "fid_floor": 1.0, "kid": 0.01, "is": 5 + w, "cas": 0.8 + 0.05 * w,
         "precision": 0.7, "recall": 0.6 - 0.1 * w, "sec_per_image": 1e-3, "n": 100}
        for w in (0.0, 1.0, 3.0)
    ]
    (tmp_path / "sweep.json").write_text(json.dumps({"model": "m", "fid_floor": 1.0, "points": points}))
    (tmp_path / "config.json").write_text(json.dumps({"train": {"lr": 2e-4}}))
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) for s in range(1, 20)))
    plots.fid_vs_is({"CFG": points}, tmp_path / "fid_vs_is.png", fid_floor=1.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    plots.grid_across_knob(images, np.repeat(np.arange(3), 4), np.tile([0.0, 1.0], 6), tmp_path / "grid.png", per_cell=2)
    return tmp_path


def test_report_contains_table_and_embedded_images(sweep_dir):
    page = write_report(sweep_dir).read_text()
    assert '<table class="metrics">' in page
    assert page.count("data:image/png;base64,") == 3  # two figures + the training curve it draws
    assert "lr" in page


def test_report_renders_in_headless_chromium(sweep_dir, tmp_path_factory):
    browser = _chromium()
    if browser is None:
        if os.environ.get("GUIDEDIFF_REQUIRE_CHROMIUM"):
            pytest.fail("Chromium is required here (GUIDEDIFF_REQUIRE_CHROMIUM is set) but not installed")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    assert main(["report", str(sweep_dir)]) == 0
    page = sweep_dir / "report.html"
    profile = tmp_path_factory.mktemp("chromium-profile")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = result.stdout
    assert 'data-images-loaded="3/3"' in dom, result.stderr[-2000:]
    assert "<table" in dom and "<th>fid</th>" in dom


def test_report_rejects_missing_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_ddgan_run_report_shows_the_game_and_the_discriminator_by_level(tmp_path):
    run = tmp_path / "grid"
    assert main(["train-ddgan", "--data", "grid25", "--T", "2", "--steps", "30", "--out", str(run), "--device", "cpu",
                 "--no-progress", "--samples", "8", "--set", "generator.hidden=16", "--set", "discriminator.hidden=16",
                 "--set", "train.log_every=10"]) == 0
    page = write_report(run).read_text()
    assert 'alt="ddgan_training.png"' in page and 'alt="samples.png"' in page
    section = page[page.index("Discriminator by level"):page.index("<h2>Config")]
    cells = [row.split("</td><td>") for row in section.split("<tr><td>")[1:]]
    assert [int(c[0]) for c in cells] == [1, 2]  # one row per level t
    assert all(0.0 <= float(c[4].split("<")[0]) <= 1.0 for c in cells)  # accuracy
    assert all(0.0 <= float(c[5].split("<")[0]) <= 1.0 for c in cells)  # AUC
    # a checkpoint whose tensors no longer fit its config: one line in the report, not torch's traceback
    from guidediff.checkpoint import latest_checkpoint

    state_file = latest_checkpoint(run / "checkpoints") / "state.json"
    state = json.loads(state_file.read_text())
    state["config"]["discriminator"]["hidden"] = 24
    state_file.write_text(json.dumps(state))
    page = write_report(run, tmp_path / "again.html").read_text()
    assert "Not measured:" in page and "(D)" in page and "<th>auc</th>" not in page


def test_ddgan_report_without_the_runs_data_says_so_and_takes_a_data_dir(tmp_path):
    import torch

    from guidediff.ddgan import train as ddgan_train
    from guidediff.ddgan.config import load_config

    tiny = ["generator.base_channels=16", "generator.channel_mult=[1, 2]", "generator.num_res_blocks=1",
            "generator.attention_resolutions=[]", "generator.nz=8", "discriminator.base_channels=8",
            "discriminator.channel_mult=[1, 2]"]
    config = load_config("fmnist", None, tiny + ["diffusion.T=2", "train.steps=2", "train.batch_size=4",
                                                 'train.device="cpu"', f'data.data_dir="{tmp_path / "gone"}"'])
    g = torch.Generator().manual_seed(0)
    data = ddgan_train.TrainingData(torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8),
                                    torch.arange(16) % 10, 10, (1, 28, 28))
    ddgan_train.train(config, tmp_path / "run", progress=False, data=data)
    page = write_report(tmp_path / "run").read_text()
    assert "Not measured: data directory" in page and "--data-dir DIR" in page
    assert "<th>accuracy</th>" not in page
    # the same run pointed at the Fashion-MNIST files the test machine has
    from guidediff.data.fmnist import find_fmnist_dir

    page = write_report(tmp_path / "run", tmp_path / "again.html", data_dir=find_fmnist_dir()).read_text()
    assert "<th>accuracy</th>" in page and "Not measured" not in page


def test_ddgan_curves_add_the_learning_rates_when_they_change(tmp_path, monkeypatch):
    shown = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda plt, fig, path, dpi=120: shown.append(len(fig.axes)) or
                        real(plt, fig, path, dpi))
    record = {"loss_d": 1.38, "loss_g": 0.69, "d_real": 0.0, "d_fake": 0.0}
    constant = [{**record, "step": s, "lr_g": 5e-5, "lr_d": 1.25e-4} for s in (1, 2, 3)]
    decaying = [{**record, "step": s, "lr_g": 5e-5 / s, "lr_d": 1.25e-4 / s} for s in (1, 2, 3)]
    assert plots.ddgan_curves(constant, tmp_path / "constant.png").is_file()
    assert plots.ddgan_curves(decaying, tmp_path / "decaying.png").is_file()
    assert shown == [2, 3]


def test_report_refuses_a_data_dir_that_is_not_a_folder(tmp_path, capsys):
    from guidediff.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "file").write_text("")
    for bad, why in ((tmp_path / "gone", "does not exist"), (tmp_path / "file", "is a file")):
        assert main(["report", str(tmp_path / "run"), "--data-dir", str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and "the folder that holds the run's dataset" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "report.html").exists()
