"""What makes a model a VDM on top of its UNet (``VDMConfig``), and run configs with a [vdm] table.

A VDM run config is a guidediff training config (configs/fmnist_cfg.toml's sections) plus a
``[vdm]`` table; ``load_vdm_run_config`` splits the two, so the rest goes through the checked
loader of guidediff.config unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guidediff.errors import UsageError, require
from guidediff.vdm.fourier import fourier_channels

FIXED_SCHEDULES = ("cfg", "cosine", "linear")


@dataclass
class VDMConfig:
    """What makes a model a VDM, on top of its UNet.

    schedule: "learned" (VDM's monotone network) or a fixed one: "cfg", "cosine", "linear".
    lam_min, lam_max: the log-SNR range λ(1), λ(0); for "learned" the initial endpoints
        (VDM's γ_0 = −13.3, γ_1 = 5.0 ⇒ λ_max = 13.3, λ_min = −5.0), which then train.
    schedule_hidden: width of the schedule network's hidden layer (VDM: 1024).
    fourier, fourier_n_min, fourier_n_max: Fourier-feature input channels sin/cos(2^n π z).
    timesteps: 0 trains the continuous-time bound L_∞, T ≥ 1 the discrete-time L_T.
    variance_minimisation: the learned schedule's shape minimises the loss estimator's variance
        (continuous time only: for T >= 1 the shape changes the bound and follows its gradient).
    antithetic: low-discrepancy times u_i = (u_0 + i/B) mod 1 during training.
    """

    schedule: str = "learned"
    lam_min: float = -5.0
    lam_max: float = 13.3
    schedule_hidden: int = 1024
    fourier: bool = True
    fourier_n_min: int = 7
    fourier_n_max: int = 8
    timesteps: int = 0
    variance_minimisation: bool = True
    antithetic: bool = True

    def validate(self) -> None:
        require(self.schedule == "learned" or self.schedule in FIXED_SCHEDULES,
                f"vdm schedule {self.schedule!r} is unknown; choose learned, {', '.join(FIXED_SCHEDULES)}")
        require(self.lam_min < self.lam_max,
                f"vdm lam_min ({self.lam_min}) must be below lam_max ({self.lam_max}); swap them")
        require(self.schedule_hidden >= 1, f"vdm schedule_hidden must be >= 1, got {self.schedule_hidden}")
        require(self.fourier_n_min <= self.fourier_n_max,
                f"vdm fourier_n_min ({self.fourier_n_min}) must not exceed fourier_n_max ({self.fourier_n_max})")
        require(self.timesteps >= 0, f"vdm timesteps must be >= 0 (0 = continuous time), got {self.timesteps}")

    def extra_channels(self, in_channels: int) -> int:
        """Input channels the UNet needs beyond the image's: the Fourier features'."""
        return fourier_channels(in_channels, self.fourier_n_min, self.fourier_n_max) if self.fourier else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VDMConfig:
        """Config from a dict; unknown keys and wrong types are one-line UsageErrors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=3)
                hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(fields)}"
                raise UsageError(f"unknown vdm config key {key!r}; {hint}")
            default = fields[key].default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, str)
            if not ok:
                raise UsageError(f"vdm config key {key!r} has the wrong type: {value!r}; "
                                 f"expected a value like {default!r}")
            kwargs[key] = value
        config = cls(**kwargs)
        config.validate()
        return config


def load_vdm_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """(Config, VDMConfig) from a TOML file whose [vdm] table configures the VDM; ``overrides``
    are ``section.key=value`` items, ``vdm.key=value`` included, checked like guidediff.config's."""
    from guidediff.config import Config, apply_overrides, load_toml, parse_override, set_value

    table = load_toml(path)
    vdm_table = table.pop("vdm", {})
    require(isinstance(vdm_table, dict), f"[vdm] in {path} must be a table of keys")
    config = apply_overrides(Config(), table, source=str(path))
    vdm = dataclasses.asdict(VDMConfig.from_dict(vdm_table))
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("vdm."):
            vdm[key[4:]] = value
        else:
            set_value(config, key, value, source=f"--set {item}")
    config.validate()
    return config, VDMConfig.from_dict(vdm)
