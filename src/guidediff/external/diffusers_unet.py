"""diffusers ``UNet2DModel`` directories as guidediff denoisers.

A directory written by ``UNet2DModel.save_pretrained`` (config.json + weights) becomes
``(net, config)`` shaped like ``loading.load_model``'s result: ``net(z, lam, c) -> ε̂`` and a
``Config`` whose ``model`` section gives the image shape and label set and whose ``schedule``
attribute is a ``DiffusersSchedule``. The noise schedule is read from a ``scheduler_config.json``
beside the weights (or in the pipeline layout's ``../scheduler/``), else it is ``DDPMScheduler``'s
default. Labels: ``num_class_embeds = K + 1`` holds K classes and the null label, by default the
last index; another null index (``null_class``) is moved to guidediff's convention (null = K, the
other labels renumbered 0..K−1 in order).

Time: the network is trained on integer timesteps t with ᾱ_t = Π(1 − β); guidediff speaks in
log-SNR, λ_t = log(ᾱ_t / (1 − ᾱ_t)). The adapter maps λ back to t exactly on the scheduler's own
timesteps and interpolates t linearly in λ between them only where a grid asks for another λ
(a warning, once, and ``net.interpolated``). The default sampling grid is the scheduler's own
DDIM timesteps (``DDIMScheduler.set_timesteps``), so our DDIM on it is diffusers' DDIM.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from guidediff.config import Config
from guidediff.errors import UsageError, require

INSTALL_HINT = "pip install guidediff[diffusers]"
GRIDS = ("timesteps", "uniform")


def require_diffusers():
    """The diffusers module, or a one-line UsageError naming the extra to install."""
    try:
        import diffusers
    except ImportError:
        raise UsageError(f"this is a diffusers model but diffusers is not installed; {INSTALL_HINT}") from None
    return diffusers


# -- recognising a diffusers directory ---------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def unet_dir(path: str | Path) -> Path | None:
    """The UNet2DModel directory that ``path`` names (itself, or a pipeline's ``unet/``), else None."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file() and (path / "unet").is_dir():
        path = path / "unet"
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else None
    return path if config is not None and config.get("_class_name") == "UNet2DModel" else None


def is_diffusers_unet(path: str | Path) -> bool:
    return unet_dir(path) is not None


def scheduler_config(folder: Path) -> tuple[dict, str]:
    """(scheduler config, where it came from): scheduler_config.json beside the UNet, in the
    pipeline's scheduler/ folder, or DDPMScheduler's defaults."""
    for candidate in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            data = _read_json(candidate)
            require(data is not None, f"{candidate} is not a JSON object; restore it or delete it to use "
                                      "DDPMScheduler's defaults")
            return data, str(candidate)
    # a wrong schedule still samples, only badly: say so rather than guess quietly
    warnings.warn(f"no scheduler_config.json beside {folder}; using DDPMScheduler's defaults (linear betas). "
                  "Save the training scheduler there with scheduler.save_pretrained(DIR)", stacklevel=3)
    return {}, "DDPMScheduler defaults (no scheduler_config.json beside the model)"


# -- the schedule ------------------------------------------------------------------------------

def lam_of_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """λ = log(ᾱ / (1 − ᾱ)) (VDM's log-SNR of a DDPM step, α² = ᾱ); log1p keeps 1 − ᾱ exact near 1."""
    alpha_bar = alpha_bar.double()
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


@dataclass(frozen=True, eq=False)
class DiffusersSchedule:
    """A diffusers scheduler's discrete ᾱ_t as a guidediff schedule u ↦ λ(u).

    u = t / (T − 1) with λ linear in t between the integer timesteps, so ``lam``, ``dlam_du`` and
    ``u_of_lam`` work as for the continuous schedules. ``lam_grid(steps)`` is the sampling grid:
    with ``grid="timesteps"`` (default) the λ of DDIMScheduler.set_timesteps(steps) followed by the
    scheduler's final ᾱ (1 with set_alpha_to_one, else ᾱ_0); with ``grid="uniform"`` uniform in u
    (between the timesteps, so the network sees interpolated t)."""

    config: dict = field(repr=False)
    grid: str = "timesteps"
    name: str = "diffusers"

    def __post_init__(self) -> None:
        require(self.grid in GRIDS, f"grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        table = lam_of_alpha_bar(self._ddim().alphas_cumprod)
        require(bool(torch.isfinite(table).all()),
                "the scheduler reaches zero terminal SNR (alpha_bar = 0 at the last timestep), where an "
                "eps-prediction cannot be turned into x; sample it with diffusers, or retrain without "
                "rescale_betas_zero_snr")
        require(bool((table[1:] < table[:-1]).all()), "the scheduler's alpha_bar must decrease over its timesteps")
        object.__setattr__(self, "lam_table", table)  # λ_t for t = 0..T−1, decreasing, float64

    def _ddim(self):
        from diffusers import DDIMScheduler

        # DDPM's config carries clip_sample=True, which clips x̂ against the guided ε; guidediff's
        # DDIM never clips unless asked (clip_x), so the grid is built from an unclipped DDIM.
        return DDIMScheduler.from_config({**self.config, "clip_sample": False})

    @property
    def num_train_timesteps(self) -> int:
        return len(self.lam_table)

    @property
    def lam_min(self) -> float:
        return float(self.lam_table[-1])

    @property
    def lam_max(self) -> float:
        return float(self.lam_table[0])

    def t_of_lam(self, lam: Tensor) -> Tensor:
        """Continuous timestep t of λ: exact on the table, linear in λ between entries, clamped."""
        table = self.lam_table.to(lam.device)
        flipped = table.flip(0)  # increasing λ, t = T−1 … 0
        lam64 = lam.double().clamp(float(flipped[0]), float(flipped[-1]))
        hi = torch.searchsorted(flipped, lam64).clamp(1, len(flipped) - 1)
        lo = hi - 1
        frac = (lam64 - flipped[lo]) / (flipped[hi] - flipped[lo])
        t_flipped = lo.double() + frac
        return (len(flipped) - 1) - t_flipped

    def lam_of_t(self, t: Tensor) -> Tensor:
        t = t.double().clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        frac = t - lo
        table = self.lam_table.to(t.device)
        return table[lo] + frac * (table[lo + 1] - table[lo])

    def lam(self, u: Tensor) -> Tensor:
        return self.lam_of_t(u.double() * (self.num_train_timesteps - 1)).to(u.dtype)

    def dlam_du(self, u: Tensor) -> Tensor:
        t = u.double() * (self.num_train_timesteps - 1)
        lo = t.floor().long().clamp(0, self.num_train_timesteps - 2)
        table = self.lam_table.to(u.device)
        return ((table[lo + 1] - table[lo]) * (self.num_train_timesteps - 1)).to(u.dtype)

    def u_of_lam(self, lam: Tensor) -> Tensor:
        return (self.t_of_lam(lam) / (self.num_train_timesteps - 1)).to(lam.dtype)

    def timesteps(self, steps: int) -> list[int]:
        """The scheduler's own DDIM timesteps for ``steps`` steps, noisiest first."""
        ddim = self._ddim()
        ddim.set_timesteps(steps)
        return [int(t) for t in ddim.timesteps]

    def lam_grid(self, steps: int, *, dtype=torch.float32, device=None) -> Tensor:
        """Increasing λ: the grid ``schedules.lam_grid`` returns for this schedule."""
        require(isinstance(steps, int) and steps >= 1, f"steps must be an integer >= 1, got {steps!r}")
        if self.grid == "uniform":
            u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
            return self.lam(u).to(dtype=dtype, device=device)
        ddim = self._ddim()
        ddim.set_timesteps(steps)
        ts = torch.as_tensor(ddim.timesteps).long()
        lams = self.lam_table[ts]
        final = lam_of_alpha_bar(torch.as_tensor(ddim.final_alpha_cumprod)).reshape(1)
        # set_alpha_to_one=False ends on ᾱ_0: a step from t = 0 to ᾱ_0 leaves z unchanged, so it is dropped
        if float(final) > float(lams[-1]):
            lams = torch.cat([lams, final])
        require(len(lams) >= 2, "one step on the scheduler's timesteps ends where it starts; use --steps 2 or more")
        return lams.to(dtype=dtype, device=device)


# -- the network -------------------------------------------------------------------------------

class DiffusersDenoiser(nn.Module):
    """``UNet2DModel`` as a guidediff denoiser ``(z, lam, c) -> ε̂``: λ → timestep t through the
    schedule, guidediff's labels (null = num_classes) → the model's, its output → ε."""

    def __init__(self, unet: nn.Module, schedule: DiffusersSchedule, prediction_type: str, num_classes: int,
                 null_class: int | None, model_config):
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.prediction = {"epsilon": "eps", "sample": "x", "v_prediction": "v"}[prediction_type]
        self.num_classes = num_classes
        self.null_class = null_class
        self.config = model_config  # guidediff's UNetConfig: image shape and label set
        self.interpolated = False

    def labels(self, c: Tensor) -> Tensor:
        """guidediff's class indices (null = num_classes) as the model's labels."""
        null = self.null_class
        return torch.where(c == self.num_classes, torch.full_like(c, null), c + (c >= null).long())

    def timestep(self, lam: Tensor) -> Tensor:
        t = self.schedule.t_of_lam(lam)
        nearest = t.round()
        if not self.interpolated and bool(((t - nearest).abs() > 1e-3).any()):
            self.interpolated = True
            warnings.warn("the sampling grid falls between the diffusers model's training timesteps; its "
                          "timestep is interpolated linearly in log-SNR (sample on the scheduler's own "
                          "timesteps, --grid u with the default grid='timesteps', to avoid it)", stacklevel=2)
        return torch.where((t - nearest).abs() <= 1e-3, nearest, t).float()

    def forward(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        from guidediff.diffusion import to_eps

        lam = lam.expand(z.shape[0]) if lam.dim() == 0 else lam
        labels = self.labels(c) if self.num_classes > 0 else None
        out = self.unet(z, self.timestep(lam), class_labels=labels).sample
        # a learned-variance model also outputs variance channels; sampling uses the mean only
        out = out[:, :z.shape[1]]
        return to_eps(self.prediction, z, out, lam)


@dataclass
class DiffusersConfig(Config):
    """guidediff's Config for a diffusers model, plus the schedule object that sampling uses."""

    schedule: Any = None
    source: dict = field(default_factory=dict)


def load_diffusers_model(path: str | Path, device: str | torch.device = "cpu", *, null_class: int | None = None,
                         grid: str = "timesteps") -> tuple[DiffusersDenoiser, DiffusersConfig]:
    """(denoiser in eval mode on ``device``, config) for a ``UNet2DModel.save_pretrained`` directory
    (or a pipeline directory with unet/ and scheduler/). ``null_class``: the model's null label
    (default its last class index); ``grid``: "timesteps" (the scheduler's own) or "uniform"."""
    from guidediff.nets.unet import UNetConfig

    folder = unet_dir(path)
    require(folder is not None, f"{path} is not a diffusers UNet2DModel directory (config.json with _class_name "
                                "UNet2DModel); save the model with UNet2DModel.save_pretrained")
    require_diffusers()
    from diffusers import UNet2DModel

    unet_config = _read_json(folder / "config.json") or {}
    require(unet_config.get("class_embed_type") in (None,),
            f"{folder}: class_embed_type {unet_config.get('class_embed_type')!r} is not supported; guidediff "
            "reads class-conditional UNet2DModels through num_class_embeds")
    embeds = unet_config.get("num_class_embeds") or 0
    require(embeds != 1, f"{folder}: num_class_embeds = 1 holds only a null label; treat it as unconditional")
    num_classes = max(embeds - 1, 0)
    if embeds:
        null_class = embeds - 1 if null_class is None else int(null_class)
        require(0 <= null_class < embeds, f"the null class must be a label of the model (0..{embeds - 1}), "
                                          f"got {null_class}")
    else:
        require(null_class is None, "this diffusers model is unconditional (no num_class_embeds); leave out the "
                                    "null class")
    sched, where = scheduler_config(folder)
    schedule = DiffusersSchedule(sched, grid=grid)
    prediction_type = sched.get("prediction_type", "epsilon")
    require(prediction_type in ("epsilon", "sample", "v_prediction"),
            f"prediction_type {prediction_type!r} of {where} is unknown; use epsilon, sample or v_prediction")
    try:
        unet = UNet2DModel.from_pretrained(str(folder))
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UsageError(f"{folder} cannot be loaded as a UNet2DModel ({' '.join(str(exc).split())[:200]}); "
                         "save it again with save_pretrained") from None
    size = unet_config.get("sample_size") or 32
    size = size if isinstance(size, int) else size[0]
    in_channels = int(unet_config.get("in_channels", 3))
    model_config = UNetConfig(image_size=int(size), in_channels=in_channels, num_classes=num_classes,
                              attention_resolutions=())
    config = DiffusersConfig(model=model_config, schedule=schedule,
                             source={"unet": str(folder), "scheduler": where, "null_class": null_class,
                                     "grid": grid, "prediction_type": prediction_type})
    config.diffusion.schedule = "diffusers"
    config.diffusion.lam_min, config.diffusion.lam_max = schedule.lam_min, schedule.lam_max
    config.data.name = "diffusers"
    config.data.resolution, config.data.channels = int(size), in_channels
    net = DiffusersDenoiser(unet, schedule, prediction_type, num_classes, null_class, model_config)
    return net.to(device).eval().requires_grad_(False), config


__all__ = ["DiffusersConfig", "DiffusersDenoiser", "DiffusersSchedule", "is_diffusers_unet",
           "lam_of_alpha_bar", "load_diffusers_model"]
