"""Golden values: exact CPU float32 samples of every guidance method and sampler on a tiny random
model, and the exact losses of a few training steps of each training path.

    PYTHONPATH=src python tests/golden/make_golden.py      # rewrites tests/golden/golden.npz

Run it only when a change is MEANT to alter the numbers (say why in the commit). tests/test_golden.py
recomputes every value with ``compute()`` and asks for bit-identical results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.npz"
NUM_CLASSES = 3


def _perturb(net: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """Every weight random (zero-initialised output layers would make ε̂ = 0 and pin nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net.eval().requires_grad_(False)


def tiny_config():
    sys.path.insert(0, str(HERE.parent))
    from train_helpers import tiny_config as base

    config = base()
    import dataclasses

    config.model = dataclasses.replace(config.model, image_size=8, in_channels=1, num_classes=NUM_CLASSES)
    return config


def tiny_unet(config, seed: int = 0):
    from guidediff.nets.unet import UNet

    torch.manual_seed(seed)
    return _perturb(UNet(config.model), seed)


def tiny_student(config, seed: int = 2):
    from guidediff.nets.w_conditioned import WConditionedUNet

    torch.manual_seed(seed)
    return _perturb(WConditionedUNet(config.model), seed)


def tiny_classifier(seed: int = 3):
    from guidediff.classifier_guidance.network import NoisyClassifier
    from guidediff.nets.unet import UNetConfig

    torch.manual_seed(seed)
    cfg = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), head_channels=8, num_classes=NUM_CLASSES)
    net = _perturb(NoisyClassifier(cfg), seed)
    return net


def _low_level(out: dict) -> None:
    """The library functions directly: samplers over guidance wrappers."""
    from guidediff import guidance as G
    from guidediff import samplers as S
    from guidediff.classifier_guidance import classifier_grad_log_prob
    from guidediff.schedules import lam_grid, make_schedule

    config = tiny_config()
    net = tiny_unet(config)
    guide = tiny_unet(config, seed=1)
    clf = tiny_classifier()
    grad = classifier_grad_log_prob(clf)
    lams = lam_grid(make_schedule("cfg", -20.0, 20.0), 4)
    null = NUM_CLASSES
    z0 = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    c = torch.tensor([0, 1, 2])
    wvec = torch.tensor([0.5, 2.0, -1.0])
    methods = {
        "cfg_w0": G.cfg(net, 0.0, null),
        "cfg_w-1": G.cfg(net, -1.0, null),
        "cfg_w3": G.cfg(net, 3.0, null),
        "cfg_wvec": G.cfg(net, wvec, null),
        "interval": G.cfg_interval(net, 3.0, null, -2.0, 4.0),
        "rescale": G.cfg_rescale(net, 3.0, null, 0.7),
        "apg": G.apg(net, 3.0, null, eta=0.5, momentum=-0.5, norm_threshold=2.0),
        "autoguidance": G.autoguidance(net, guide, 3.0),
        "cg_score": G.classifier_guidance(G.unconditional(net, null), grad, 4.0),
    }
    samplers = {
        "ddim0": lambda d, **kw: S.sample_ddim(d, z0, lams, c, eta=0.0, clip_x=1.0, **kw),
        "ddim1": lambda d, **kw: S.sample_ddim(d, z0, lams, c, eta=1.0, clip_x=1.0, **kw),
        "ancestral": lambda d, **kw: S.sample_ancestral(d, z0, lams, c, v=0.3, clip_x=1.0, **kw),
    }
    with torch.no_grad():
        for m, den in methods.items():
            for s, run in samplers.items():
                if hasattr(den, "reset"):
                    den.reset()
                out[f"low/{m}/{s}"] = run(den, generator=torch.Generator().manual_seed(11))
        out["low/cg_mean/ancestral"] = S.sample_ancestral(
            G.unconditional(net, null), z0, lams, c, v=0.3, clip_x=1.0, generator=torch.Generator().manual_seed(11),
            mean_shift=G.classifier_mean_shift(grad, 4.0))
        out["low/sample/ddim"] = S.sample(G.cfg(net, 2.0, null), z0, lams, c, sampler="ddim", eta=0.5,
                                          generator=torch.Generator().manual_seed(5))


def _generate(out: dict) -> None:
    """The same through ``generate`` (its batching, seeding and method choice)."""
    from guidediff.generation import generate

    config = tiny_config()
    net = tiny_unet(config)
    common = dict(steps=3, seed=4, device="cpu", progress=False, batch_size=4, bf16=False, channels_last=False)
    ws = [-1.0, 0.0, 3.0]
    cases = {
        "cfg/ddim": dict(),
        "cfg/ddim_eta1": dict(eta=1.0),
        "cfg/ancestral": dict(sampler="ancestral", v=0.5),
        "cfg/noclip": dict(clip_x=None),
        "interval/ddim": dict(cfg_variant={"name": "interval", "lam_lo": -2.0, "lam_hi": 4.0}),
        "rescale/ddim": dict(cfg_variant={"name": "rescale", "phi": 0.7}),
        "apg/ancestral": dict(sampler="ancestral", cfg_variant={"name": "apg", "eta": 0.5, "momentum": -0.5,
                                                                "norm_threshold": 2.0}),
        "autoguidance/ddim": dict(cfg_variant={"name": "autoguidance"}, guide_net=tiny_unet(config, seed=1)),
        "cg_score/ddim": dict(guidance="classifier", classifier=tiny_classifier(), base="uncond"),
        "cg_score_cond/ancestral": dict(sampler="ancestral", guidance="classifier", classifier=tiny_classifier(),
                                        base="cond"),
        "cg_mean/ancestral": dict(sampler="ancestral", guidance="classifier", classifier=tiny_classifier(),
                                  cg_form="mean"),
    }
    for name, extra in cases.items():
        ws_here = [0.0, 4.0] if "cg_" in name else ws
        result = generate(net, config, [0, 2], ws_here, 3, **common, **extra)
        out[f"gen/{name}/x"] = result["x"]
        out[f"gen/{name}/nfe"] = np.float64(result["nfe_per_image"])
    result = generate(tiny_student(config), config, [0, 2], ws, 3, **common)
    out["gen/student/ddim/x"] = result["x"]
    out["gen/student/ddim/nfe"] = np.float64(result["nfe_per_image"])


def _adam_steps(model, loss_fn, x, c, steps: int = 3, seed: int = 0) -> np.ndarray:
    from guidediff.train_step import StepContext

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed + step)
        ctx = StepContext(step=step, generator=g, rank=0, world_size=1, global_batch=x.shape[0])
        loss = loss_fn(model, x, c, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return np.asarray(losses, dtype=np.float64)


def _batch(n: int = 6):
    g = torch.Generator().manual_seed(21)
    x = torch.rand((n, 1, 8, 8), generator=g) * 2 - 1
    c = torch.arange(n) % NUM_CLASSES
    return x, c


def _losses(out: dict) -> None:
    """A few optimiser steps of each training objective, from the default configs."""
    from guidediff.classifier_guidance.network import NoisyClassifier
    from guidediff.nets.unet import UNet
    from guidediff.classifier_guidance.training import noisy_classifier_loss
    from guidediff.train import cfg_loss

    config = tiny_config()
    x, c = _batch()
    torch.manual_seed(0)
    out["loss/cfg"] = _adam_steps(UNet(config.model).train(), cfg_loss(config), x, c)
    torch.manual_seed(0)
    out["loss/noisy_classifier"] = _adam_steps(NoisyClassifier(config.model).train(), noisy_classifier_loss(config),
                                               x, c)

    from guidediff.vdm.config import VDMConfig
    from guidediff.vdm.model import VDMModel, vdm_loss, vdm_unet_config

    vdm = VDMConfig()
    torch.manual_seed(0)
    model = VDMModel(vdm_unet_config(config.model, vdm), vdm).train()
    out["loss/vdm"] = _adam_steps(model, vdm_loss(vdm, p_uncond=0.1, null_class=NUM_CLASSES), x, c)

    from guidediff.ddgan.config import preset
    from guidediff.ddgan.schedule import DiscreteVP
    from guidediff.ddgan.train import build_networks
    from guidediff.ddgan.update import Nets, train_step

    dc = preset("grid25")
    torch.manual_seed(0)
    G, D = build_networks(dc, (2,), 25)
    t = dc.train
    nets = Nets(G, D, G, D, torch.optim.Adam(G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2)),
                torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2)))
    lams = DiscreteVP(dc.diffusion.T, dc.diffusion.beta_min, dc.diffusion.beta_max).lams()
    x2 = torch.randn((16, 2), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    rows = []
    for step in range(3):
        info = train_step(nets, x2, None, lams, dc, g, r1_step=step % t.r1_every == 0, bf16=False)
        rows.append([float(info[k]) for k in ("loss_d", "loss_g", "r1", "r2")])
    out["loss/ddgan"] = np.asarray(rows, dtype=np.float64)


def compute() -> dict[str, np.ndarray]:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # float32 reductions then add in one order on every machine
    out: dict = {}
    _low_level(out)
    _generate(out)
    _losses(out)
    return {k: (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in out.items()}


if __name__ == "__main__":
    values = compute()
    np.savez(GOLDEN, **values)
    print(f"wrote {len(values)} arrays to {GOLDEN}")
