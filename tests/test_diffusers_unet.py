"""diffusers UNet2DModel directories as guidediff denoisers, cross-checked against diffusers' own
DDIM + CFG loop (skipped without diffusers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from guidediff.loading import load_model  # noqa: E402
from guidediff.guidance import cfg  # noqa: E402
from guidediff.samplers import sample_ddim  # noqa: E402
from guidediff.schedules import lam_grid, schedule_of  # noqa: E402

NUM_CLASSES = 3


def tiny_unet(null_last: bool = True):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=NUM_CLASSES + 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusers_unet")
    unet = tiny_unet()
    with torch.no_grad():  # random weights, made large enough that the class label matters
        unet.class_embedding.weight.mul_(20)
    unet.save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(folder)
    return folder


def diffusers_cfg_loop(unet, scheduler, z, labels, null_label, guidance_scale):
    """diffusers' usual CFG loop: cond and uncond rows in one call, s = 1 + w, scheduler.step."""
    for t in scheduler.timesteps:
        both = torch.cat([z, z])
        cls = torch.cat([labels, torch.full_like(labels, null_label)])
        eps_c, eps_u = unet(both, t, class_labels=cls).sample.chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        z = scheduler.step(eps, t, z).prev_sample
    return z


@pytest.mark.parametrize("steps,w", [(10, 2.0), (7, 0.5)])
def test_our_ddim_cfg_equals_diffusers_ddim_cfg(model_dir, steps, w):
    net, config = load_model(model_dir)
    assert config.model.num_classes == NUM_CLASSES and config.model.image_size == 8
    lams = lam_grid(schedule_of(config), steps)
    z1 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        ours = sample_ddim(cfg(net, w, config.model.num_classes), z1, lams, c, clip_x=None)
        sched_config = json.loads((model_dir / "scheduler_config.json").read_text())
        ddim = diffusers.DDIMScheduler.from_config({**sched_config, "clip_sample": False})
        ddim.set_timesteps(steps)
        theirs = diffusers_cfg_loop(net.unet, ddim, z1, c, NUM_CLASSES, 1.0 + w)
        plain = diffusers_cfg_loop(net.unet, ddim, z1, c, NUM_CLASSES, 1.0)
    assert not net.interpolated
    assert len(lams) == steps + 1 and torch.isinf(lams[-1])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # the comparison can fail: guidance changes the samples by far more than the tolerance
    assert (theirs - plain).abs().max() > 1e-2


def test_lambda_maps_to_the_scheduler_timesteps(model_dir):
    net, config = load_model(model_dir)
    schedule = config.schedule
    ts = torch.tensor([0, 1, 500, 998, 999])
    lams = schedule.lam_table[ts].float()
    assert torch.equal(net.timestep(lams), ts.float())
    assert not net.interpolated
    with pytest.warns(UserWarning, match="interpolated"):
        mid = net.timestep(((schedule.lam_table[10] + schedule.lam_table[11]) / 2).reshape(1))
    assert net.interpolated and 10 < float(mid) < 11
    u = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    assert torch.allclose(schedule.u_of_lam(schedule.lam(u)), u, atol=1e-9)


def test_grid_kinds_on_the_scheduler_and_the_shifted_config_schedule(model_dir):
    """'u' is the scheduler's own timesteps; lambda/karras span its table's ends. A guidediff
    config without an own schedule gets its [diffusion] schedule, shift included."""
    from guidediff.config import Config
    from guidediff.generation import model_lam_grid
    from guidediff.schedules import schedule_from_config

    _, config = load_model(model_dir)
    schedule = config.schedule
    assert torch.equal(model_lam_grid(config, 5, "cpu"), schedule.lam_grid(5))
    ends = (float(schedule.lam_table[-1]), float(schedule.lam_table[0]))
    for kind in ("lambda", "karras"):
        lams = model_lam_grid(config, 5, "cpu", kind=kind).double()
        assert len(lams) == 6 and bool((lams[1:] > lams[:-1]).all())
        assert (float(lams[0]), float(lams[-1])) == pytest.approx(ends, abs=1e-4)
    plain = Config()
    plain.diffusion.schedule, plain.diffusion.schedule_shift = "cfg", 2.0
    shifted = lam_grid(schedule_from_config(plain.diffusion), 4)
    assert torch.equal(lam_grid(schedule_of(plain), 4), shifted)
    plain.diffusion.schedule_shift = 1.0
    assert not torch.equal(lam_grid(schedule_of(plain), 4), shifted)


def test_null_label_elsewhere_is_renumbered(tmp_path):
    tiny_unet().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no scheduler_config.json"):
        net, config = load_model(tmp_path, null_class=0)
    assert config.model.num_classes == NUM_CLASSES
    assert net.labels(torch.tensor([0, 1, 2, 3])).tolist() == [1, 2, 3, 0]
    with pytest.raises(Exception, match="null class"):
        load_model(tmp_path, null_class=NUM_CLASSES + 1)


def test_a_diffusers_guide_takes_the_main_models_null_label(tmp_path):
    from guidediff.loading import load_guide_model

    tiny_unet().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no scheduler_config.json"):
        main, _ = load_model(tmp_path, null_class=0)
        guide = load_guide_model(tmp_path, "cpu", main)
    assert guide.null_class == main.null_class == 0
    assert guide.labels(torch.tensor([3])).tolist() == [0]  # our null token reaches both as label 0


def test_generate_sample_and_every_guidance_method(model_dir, tmp_path):
    """Every sampler and guidance method of the registries through generate, then the CLI's sample."""
    import subprocess
    import sys

    from guidediff.generation import generate
    from guidediff.guidance import GUIDANCE
    from guidediff.classifier_guidance.network import NoisyClassifier
    from guidediff.nets.unet import UNetConfig
    from guidediff.samplers import SAMPLERS

    net, config = load_model(model_dir)
    torch.manual_seed(0)
    noisy = NoisyClassifier(UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2),
                                       num_res_blocks=1, attention_resolutions=(4,), head_channels=8,
                                       num_classes=NUM_CLASSES)).eval()
    extra = {"autoguidance": {"guide_net": net}, "classifier": {"classifier": noisy},
             "interval": {"guidance_options": {"lam_lo": -4.0, "lam_hi": 4.0}}}
    methods = [m for m in GUIDANCE if m != "distilled"]  # distilled: a student of guidediff's own UNet
    assert {"cfg", "interval", "rescale", "apg", "autoguidance", "classifier"} <= set(methods)
    runs = [("ddim", m) for m in methods] + [(s, "cfg") for s in SAMPLERS if s != "ddim"]
    for sampler, method in runs:
        out = generate(net, config, [0, 2], [0.0, 2.0], 1, sampler=sampler, steps=3, progress=False,
                       guidance=method, **extra.get(method, {}))
        assert out["x"].shape == (4, 8, 8, 3) and out["x"].dtype == np.uint8, (sampler, method)
    run = subprocess.run([sys.executable, "-m", "guidediff", "sample", str(model_dir), "--n", "1", "--steps", "2",
                          "--w", "0,1", "--device", "cpu", "--out", str(tmp_path / "s")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert f["x"].shape == (2 * NUM_CLASSES, 8, 8, 3)
