"""The throughput a training run reports is the run's: images of this invocation's steps over the
wall seconds of its training loop, not the rate of the last log window (which can hold a single
step and a slow sample hook; it once printed 89.65 images/s for a run that averaged ~3,800)."""

from __future__ import annotations

import re
import time

import pytest

from guidediff.train import describe, train
from train_helpers import tiny_arrays, tiny_config

HOOK_S = 0.3


def _slow_hook(ema_model, step, out_dir):
    # stands in for sample grids / accuracy-vs-λ: slow work inside the loop, here in the last log window
    time.sleep(HOOK_S)


def _run(run_dir, *overrides, **kw):
    # 5 steps of 8 images; logged at 4 and 5, the hook runs after step 4: the last window is
    # one step plus the hook, so its rate is far from the run's (old formula: about 8/0.3 images/s)
    config = tiny_config("train.log_every=4", "train.sample_every=4", "train.checkpoint_every=100", *overrides)
    return train(config, run_dir, dataset=tiny_arrays(), sample_fn=_slow_hook, progress=False,
                 log=lambda _m: None, **kw)


def test_reported_throughput_is_images_over_loop_seconds(tmp_path):
    result = _run(tmp_path, "train.steps=5")
    assert result.step == 5 and result.images == 5 * 8
    assert result.loop_s >= HOOK_S  # the hook is inside the loop's seconds
    assert result.loop_s <= result.elapsed_s
    assert result.images_per_sec == pytest.approx(result.images / result.loop_s, rel=1e-9)
    # never below images over the whole call's seconds (setup included), the bound a user checks by hand
    assert result.images_per_sec >= result.step * 8 / result.elapsed_s
    printed = describe(result)
    shown = float(re.search(r"throughput: ([0-9.e+]+) images/s", printed).group(1))
    assert shown == pytest.approx(result.images_per_sec, rel=1e-3)
    assert f"({result.images} images in" in printed


def test_resume_counts_only_its_own_steps(tmp_path):
    _run(tmp_path, "train.steps=3")
    result = _run(tmp_path, "train.steps=5", resume=True)
    assert result.step == 5 and result.images == 2 * 8
    assert result.images_per_sec == pytest.approx(result.images / result.loop_s, rel=1e-9)
    done = _run(tmp_path, "train.steps=5", resume=True)  # nothing left to train
    assert done.images == 0 and done.images_per_sec is None
    assert "throughput" not in describe(done)
