"""Post-hoc EMA on disk: the extra power EMAs a run keeps (``train.posthoc_ema``), their snapshots
in <run>/posthoc/, and the model of any σ_rel solved from them after training (``posthoc_ema``).

A snapshot is one safetensors file (float32, written atomically) per profile and snapshot step,
named ``phema-<step>-gamma<γ>.safetensors``; its metadata holds the step, the profile's update count
t, γ and σ_rel. Snapshots are taken every ``train.posthoc_every`` steps and at the run's last step,
so a profile's own σ_rel is reproduced at the end exactly. The profiles' running state travels in
each checkpoint (posthoc_ema.safetensors), so a resumed run continues them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from guidediff.ema import EMA, gamma_label, power_gamma
from guidediff.errors import UsageError, require

SNAPSHOT_DIR = "posthoc"
SNAPSHOT_FORMAT = "guidediff-posthoc-ema-v1"
_NAME = re.compile(r"phema-(\d{7,})-gamma[0-9.]+\.safetensors")
DEFAULT_MAX_FIT_ERROR = 0.05


def snapshot_name(step: int, gamma: float) -> str:
    return f"phema-{step:07d}-gamma{gamma_label(gamma)}.safetensors"


class PosthocEMA:
    """One power EMA per σ_rel (EDM2's two profiles), updated by the training step beside the main
    EMA, with snapshots into ``folder`` every ``every`` steps."""

    def __init__(self, module: nn.Module, sigma_rels: list[float], every: int, folder: Path):
        self.emas = [EMA(module, sigma_rel=s) for s in sigma_rels]
        self.every, self.folder = int(every), Path(folder)
        self.buffers = [name for name, _ in module.named_buffers()]

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last

    def snapshot(self, step: int) -> None:
        from guidediff.checkpoint import save_tensors_atomic

        self.folder.mkdir(parents=True, exist_ok=True)
        for ema in self.emas:
            meta = {"format": SNAPSHOT_FORMAT, "step": str(step), "t": str(ema.num_updates),
                    "gamma": repr(ema.gamma), "sigma_rel": repr(ema.sigma_rel), "buffers": json.dumps(self.buffers)}
            save_tensors_atomic({k: v.float() if v.is_floating_point() else v for k, v in ema.state_dict().items()},
                                self.folder / snapshot_name(step, ema.gamma), metadata=meta)

    def forget_after(self, step: int) -> None:
        """Remove snapshots of steps after ``step``: a resumed run takes those steps again."""
        for path in self.folder.glob("phema-*.safetensors"):
            match = _NAME.fullmatch(path.name)
            if match and int(match.group(1)) > step:
                path.unlink()

    # -- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}/{k}": v for i, ema in enumerate(self.emas) for k, v in ema.state_dict().items()}

    def meta(self) -> list[dict]:
        return [ema.meta() for ema in self.emas]

    def load(self, tensors: dict[str, torch.Tensor], meta: list[dict], where: str) -> None:
        saved = [m.get("sigma_rel") for m in meta]
        require(saved == [ema.sigma_rel for ema in self.emas],
                f"{where} holds post-hoc EMA profiles for sigma_rel {saved}, but train.posthoc_sigma_rels is "
                f"{[ema.sigma_rel for ema in self.emas]}; resume with the run's own values")
        for i, (ema, m) in enumerate(zip(self.emas, meta)):
            ema.load_state_dict({k[len(f"{i}/"):]: v for k, v in tensors.items() if k.startswith(f"{i}/")})
            ema.load_meta(m)


def posthoc_from_config(module: nn.Module, train_config, run_dir: Path) -> PosthocEMA | None:
    t = train_config
    if not getattr(t, "posthoc_ema", False):
        return None
    return PosthocEMA(module, list(t.posthoc_sigma_rels), t.posthoc_every, Path(run_dir) / SNAPSHOT_DIR)


# -- reading snapshots and solving -------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int
    t: int  # the profile's update count: the weight vector's length
    gamma: float
    sigma_rel: float
    buffers: tuple[str, ...]


def list_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The snapshots of a run (its posthoc/ folder), by step then γ; a UsageError names the fix when
    there are none."""
    from guidediff.checkpoint import safetensors_header

    folder = Path(run_dir) / SNAPSHOT_DIR
    paths = sorted(p for p in folder.glob("phema-*.safetensors") if _NAME.fullmatch(p.name)) if folder.is_dir() else []
    require(paths, f"{run_dir} has no post-hoc EMA snapshots ({SNAPSHOT_DIR}/phema-*.safetensors); train with "
                   "--set train.posthoc_ema=true to keep them")
    snaps = []
    for path in paths:
        meta = safetensors_header(path).get("__metadata__") or {}
        require(meta.get("format") == SNAPSHOT_FORMAT, f"{path} is not a post-hoc EMA snapshot; remove it")
        try:
            snap = Snapshot(path, int(meta["step"]), int(meta["t"]), float(meta["gamma"]),
                            float(meta["sigma_rel"]), tuple(json.loads(meta.get("buffers", "[]"))))
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{path} is a damaged post-hoc EMA snapshot (its metadata lacks or garbles "
                             f"{exc}); remove it") from None
        # parsed is not sane: a NaN γ or a step 0 would surface deep in the solver
        require(snap.step >= 1 and snap.t >= 1 and math.isfinite(snap.gamma) and snap.gamma >= 0
                and 0 < snap.sigma_rel < 1, f"{path} is a damaged post-hoc EMA snapshot (step {snap.step}, t {snap.t}, "
                f"gamma {snap.gamma}, sigma_rel {snap.sigma_rel}); remove it")
        snaps.append(snap)
    return sorted(snaps, key=lambda s: (s.step, s.gamma))


def representable_ranges(basis, max_fit_error: float) -> list[tuple[float, float]]:
    """The σ_rel intervals (on a grid of 0.0025) whose weights the snapshots fit to
    ``max_fit_error``, each a run of neighbouring grid points (snapshots of two distant profiles
    only can represent two separate intervals); empty if no grid point fits."""
    grid = [0.0025 * k for k in range(2, 112)]  # 0.005 .. 0.2775, inside power_gamma's domain
    spans: list[tuple[float, float]] = []
    previous_fit = False
    for s in grid:
        fits = basis.fit_error(power_gamma(s)) <= max_fit_error
        if fits:
            spans = spans[:-1] + [(spans[-1][0], s)] if previous_fit else spans + [(s, s)]
        previous_fit = fits
    return spans


def check_sigma_rel(sigma_rel: float) -> float:
    """σ_rel as a float inside the power EMA's domain (0, √(1/12)), else a one-line UsageError."""
    from guidediff.ema import SIGMA_REL_MAX

    sigma_rel, limit = float(sigma_rel), SIGMA_REL_MAX
    require(0.0 < sigma_rel < limit, f"--sigma-rel must lie in (0, {limit:.4f}) (EDM2 uses 0.05 to 0.15), "
                                     f"got {sigma_rel}")
    return sigma_rel


def posthoc_ema(run_dir: str | Path, sigma_rel: float,
                max_fit_error: float = DEFAULT_MAX_FIT_ERROR) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of a power EMA with length ``sigma_rel`` at the run's last snapshot step T, as the
    least-squares combination Σ_i x_i·θ̂(t_i; γ_i) of its snapshots (EDM2 Sec. 3, solved on the exact
    discrete per-step weights: ``posthoc_ema.PosthocBasis``), and what was solved (coefficients, fit).

    Parameters are combined in float64 one snapshot at a time (memory: two copies of the model);
    buffers are the last step's. A σ_rel whose per-step weights the snapshots fit worse than
    ``max_fit_error`` (relative L²) is a UsageError naming the range they can represent."""
    import numpy as np

    from guidediff.posthoc_ema import PosthocBasis

    sigma_rel = check_sigma_rel(sigma_rel)
    snaps = list_snapshots(run_dir)
    basis = PosthocBasis(tuple(s.t for s in snaps), tuple(s.gamma for s in snaps))
    gamma_r = power_gamma(sigma_rel)
    fit = basis.fit_error(gamma_r)
    if fit > max_fit_error:
        spans = representable_ranges(basis, max_fit_error)
        where = ("they represent sigma_rel " + " and ".join(f"{lo:.4g} to {hi:.4g}" for lo, hi in spans) if spans
                 else "they represent none; keep more snapshots (a smaller train.posthoc_every)")
        raise UsageError(f"sigma_rel {sigma_rel:g} is outside what the {len(snaps)} snapshots in {run_dir} can represent "
                         f"(its weights fit to {fit:.1%}, above {max_fit_error:.0%}); {where}")
    x = basis.coefficients(gamma_r)
    last = max(snaps, key=lambda s: (s.t, s.step))
    from guidediff.checkpoint import read_tensors

    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] | None = None  # the first snapshot's names and shapes, buffers included
    for snap, coeff in zip(snaps, x):
        tensors = read_tensors(snap.path)
        mine = {k: tuple(v.shape) for k, v in tensors.items()}
        shapes = shapes or mine
        require(mine == shapes, f"{snap.path} holds other weights than the other snapshots; remove the snapshots "
                                "of other runs from the folder")
        for name, value in tensors.items():
            if name in snap.buffers or not value.is_floating_point():
                continue
            acc = out.setdefault(name, torch.zeros_like(value, dtype=torch.float64))
            acc.add_(value.double(), alpha=float(coeff))
    for name, value in read_tensors(last.path).items():
        out[name] = value if name in last.buffers or not value.is_floating_point() else out[name].float()
    info = {"sigma_rel": sigma_rel, "gamma": gamma_r, "step": last.step, "fit_error": fit,
            "snapshots": len(snaps), "coefficients": [float(c) for c in np.asarray(x)]}
    return out, info
