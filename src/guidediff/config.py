"""One configuration object for a training run: dataclass sections loaded from TOML, overridden by
checked ``section.key=value`` pairs and saved resolved as ``config.json`` beside every run.

Sections: ``data`` (DataConfig), ``model`` (the UNet's own UNetConfig), ``diffusion``
(DiffusionConfig), ``train`` (TrainConfig), ``sample`` (SampleConfig), plus the top-level
``out_dir``. An unknown section or key is a UsageError listing the close matches; a value of the
wrong type is a UsageError naming the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidediff.errors import UsageError, require
from guidediff.lr_schedule import DECAYS
from guidediff.nets.unet import UNetConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
PREDICTIONS = ("eps",)


@dataclass
class DataConfig:
    """name: "fmnist" (or another dataset name of guidediff.data) or the path of an image folder
    with one sub-folder per class. resolution/channels: required for folders, fixed for fmnist."""

    name: str = "fmnist"
    data_dir: str | None = None
    resolution: int | None = None
    channels: int | None = None
    hflip: bool = False
    skip_bad_images: bool = False


@dataclass
class DiffusionConfig:
    """schedule: "cfg" | "cosine" | "linear"; lam_min/lam_max None keep the schedule's own range.
    p_uncond: probability of training a sample with the null label (CFG paper: 0.1 or 0.2).
    antithetic: VDM's low-discrepancy sampler for the times u.
    Recipe levers (docs/training.md; the defaults are the CFG paper's recipe):
    schedule_shift: s of the shifted cosine, λ + 2·log s (schedule "cfg" only; 1 = no shift).
    precondition: "none" | "edm" (EDM's c_skip, c_out, c_in around the net, with sigma_data).
    loss_weight: "eps" | "edm" | "min_snr" (with min_snr_gamma) | "v", the weight of the ε-error.
    lam_sampling: "schedule" (λ(u), u uniform) | "lognormal" (ln σ_e ~ N(p_mean, p_std²), σ_e = e^{−λ/2})."""

    schedule: str = "cfg"
    lam_min: float | None = None
    lam_max: float | None = None
    p_uncond: float = 0.1
    prediction: str = "eps"
    antithetic: bool = False
    schedule_shift: float = 1.0
    precondition: str = "none"
    sigma_data: float = 0.5
    loss_weight: str = "eps"
    min_snr_gamma: float = 5.0
    lam_sampling: str = "schedule"
    p_mean: float = -1.2
    p_std: float = 1.2


@dataclass
class TrainConfig:
    """batch_size is the GLOBAL batch (split evenly over processes). lr warms up linearly over
    warmup_steps, then stays constant. EMA decay d_n = min(ema_decay, (1+n)/(10+n)) when
    ema_warmup, so a short run averages over about n/9 steps instead of 1/(1−ema_decay).
    lr_schedule "cosine"/"linear" decays the rate after warm-up to lr_final·lr at train.steps
    ("constant": no decay). ema "power" is EDM2's power-function EMA whose length is the fraction
    ema_sigma_rel of training so far (ema_decay/ema_warmup then unused). posthoc_ema keeps one more
    power EMA per posthoc_sigma_rels entry and stores them every posthoc_every steps (post-hoc EMA).
    "auto" for mixed_precision/compile/channels_last/cuda_graph means: on for CUDA, off on CPU."""

    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 1000
    steps: int = 20000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    lr_schedule: str = "constant"
    lr_final: float = 0.1
    ema: str = "exp"
    ema_sigma_rel: float = 0.1
    # post-hoc EMA (EDM2): more power EMAs, one per σ_rel, stored every posthoc_every steps into
    # <run>/posthoc/; `guidediff posthoc-ema` then solves for any σ_rel after training
    posthoc_ema: bool = False
    posthoc_sigma_rels: list[float] = field(default_factory=lambda: [0.05, 0.10])
    posthoc_every: int = 1000
    mixed_precision: str = "auto"
    seed: int = 0
    log_every: int = 100
    sample_every: int = 5000
    checkpoint_every: int = 5000
    keep_last: int = 3
    compile: bool | str = "auto"
    # the whole step (data, loss, backward, all-reduce, clipping, AdamW, EMA) as one CUDA graph: "auto" =
    # on for CUDA with the default loss; "eager" = the same step without the capture (debugging)
    cuda_graph: bool | str = "auto"
    channels_last: bool | str = "auto"
    deterministic: bool = False
    tensorboard: bool = True
    device: str = "auto"


@dataclass
class SampleConfig:
    """Defaults for the sample grids written during training and for ``guidediff sample``.
    w follows the CFG paper (ε̃ = (1+w)ε(z,c) − wε(z,∅); diffusers' guidance_scale = 1 + w)."""

    sampler: str = "ddim"
    steps: int = 50
    w: list[float] = field(default_factory=lambda: [0.0, 3.0])
    eta: float = 0.0
    v: float = 0.3
    n: int = 8
    # the guidance method `guidediff sample` and `sweep` use unless their --cfg-variant says otherwise
    cfg_variant: str = "plain"  # plain, or a method of guidance.registry.cfg_variants()
    interval: list[float] = field(default_factory=list)  # interval: [lam_lo, lam_hi]
    phi: float = 0.7  # rescale
    apg_eta: float = 0.0
    apg_momentum: float = 0.0
    apg_threshold: float = 0.0  # 0: no norm threshold
    guide_model: str = ""  # autoguidance: the guide's path
    # the options cfg_variant's method declares in the guidance registry (any method, also one
    # registered outside guidediff): a [sample.guidance_options] table. They take precedence over
    # the fixed fields above, which stay for the built-in methods (interval, phi, apg_*).
    guidance_options: dict[str, Any] = field(default_factory=dict)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": UNetConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
}
TOP_LEVEL = ("out_dir",)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    out_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        return {**sections_to_dict(self, SECTIONS), "out_dir": self.out_dir}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> Config:
        """Build and validate a config from a nested dict; missing keys keep their defaults."""
        return apply_overrides(cls(), d, source=source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def validate(self) -> None:
        """Raise UsageError naming the fix for values that are well typed but unusable."""
        d, t, s = self.diffusion, self.train, self.sample
        require(d.schedule in ("cfg", "cosine", "linear"),
                f"diffusion.schedule {d.schedule!r} is unknown; choose cfg, cosine or linear")
        require(0.0 <= d.p_uncond <= 1.0, f"diffusion.p_uncond must lie in [0, 1], got {d.p_uncond}")
        require(d.prediction in PREDICTIONS,
                f"diffusion.prediction {d.prediction!r} is not supported; use {', '.join(PREDICTIONS)}")
        require(math.isfinite(d.schedule_shift) and d.schedule_shift > 0,
                f"diffusion.schedule_shift must be a positive number (1 = no shift), got {d.schedule_shift}")
        require(d.schedule_shift == 1.0 or d.schedule == "cfg",
                f"diffusion.schedule_shift needs schedule = \"cfg\" (the shifted cosine), not {d.schedule!r}")
        _choice("diffusion.precondition", d.precondition, ("none", "edm"))
        _choice("diffusion.loss_weight", d.loss_weight, ("eps", "edm", "min_snr", "v"))
        _choice("diffusion.lam_sampling", d.lam_sampling, ("schedule", "lognormal"))
        require(d.sigma_data > 0, f"diffusion.sigma_data must be > 0, got {d.sigma_data}")
        require(d.min_snr_gamma > 0, f"diffusion.min_snr_gamma must be > 0, got {d.min_snr_gamma}")
        require(d.p_std > 0, f"diffusion.p_std must be > 0, got {d.p_std}")
        _choice("train.lr_schedule", t.lr_schedule, DECAYS)
        require(0.0 <= t.lr_final <= 1.0, f"train.lr_final (a fraction of lr) must lie in [0, 1], got {t.lr_final}")
        _choice("train.ema", t.ema, ("exp", "power"))
        from guidediff.ema import SIGMA_REL_MAX

        require(0.0 < t.ema_sigma_rel < SIGMA_REL_MAX, f"train.ema_sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}) "
                f"(EDM2 uses 0.05 to 0.15), got {t.ema_sigma_rel}")
        require(len(t.posthoc_sigma_rels) >= 1 and all(0.0 < r < SIGMA_REL_MAX for r in t.posthoc_sigma_rels)
                and len(set(t.posthoc_sigma_rels)) == len(t.posthoc_sigma_rels),
                f"train.posthoc_sigma_rels must be distinct numbers in (0, {SIGMA_REL_MAX:.4f}) (EDM2 stores 0.05 and "
                f"0.10), got {t.posthoc_sigma_rels}")
        if t.posthoc_ema:
            from guidediff.ema import gamma_label, power_gamma

            # the snapshot files are named by γ to 4 decimals: two profiles must not share a name
            names = {gamma_label(power_gamma(r)) for r in t.posthoc_sigma_rels}
            require(len(names) == len(t.posthoc_sigma_rels),
                    f"train.posthoc_sigma_rels {t.posthoc_sigma_rels} holds values too close to keep apart (their "
                    "snapshots would share a file name); make them differ by at least 0.001")
        for name in ("batch_size", "steps", "log_every", "sample_every", "checkpoint_every", "keep_last",
                     "posthoc_every"):
            require(getattr(t, name) >= 1, f"train.{name} must be >= 1, got {getattr(t, name)}")
        require(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
        require(t.lr > 0 and math.isfinite(t.lr), f"train.lr must be a positive number, got {t.lr}")
        require(t.adam_eps > 0, f"train.adam_eps must be > 0, got {t.adam_eps}")
        require(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
        require(t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 turns clipping off), got {t.grad_clip}")
        require(t.mixed_precision in MIXED_PRECISION,
                f"train.mixed_precision {t.mixed_precision!r} is unknown; choose {', '.join(MIXED_PRECISION)}")
        for name in ("compile", "channels_last"):
            value = getattr(t, name)
            require(isinstance(value, bool) or value == "auto",
                    f"train.{name} must be true, false or \"auto\", got {value!r}")
        require(isinstance(t.cuda_graph, bool) or t.cuda_graph in ("auto", "eager"),
                f"train.cuda_graph must be true, false, \"auto\" or \"eager\", got {t.cuda_graph!r}")
        require(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {t.device!r}")
        from guidediff.samplers import SAMPLERS

        require(s.sampler in SAMPLERS, f"sample.sampler {s.sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
        require(s.steps >= 1 and s.n >= 1, f"sample.steps and sample.n must be >= 1, got {s.steps} and {s.n}")
        require(all(math.isfinite(w) for w in s.w), f"sample.w must hold finite numbers, got {s.w}")
        from guidediff.guidance.registry import cfg_variants

        variants = cfg_variants()
        require(s.cfg_variant in variants, f"sample.cfg_variant {s.cfg_variant!r} is unknown; choose one of "
                                           f"{', '.join(variants)}")
        _check_guidance_options(s)
        self.model.validate()


def _check_guidance_options(s: SampleConfig) -> None:
    """sample.guidance_options against the options that sample.cfg_variant's method declares in the
    guidance registry: known names, their types, the method's own checks."""
    from guidediff.guidance.registry import get_guidance

    method = "cfg" if s.cfg_variant == "plain" else s.cfg_variant
    spec = get_guidance(method)
    declared = {o.name: o for o in spec.options if o.is_flag}
    for key, value in s.guidance_options.items():
        require(key in declared, f"sample.guidance_options.{key} is not an option of guidance {method} "
                                 f"(sample.cfg_variant); its options are {', '.join(declared) or 'none'}")
        ok, _ = convert_value(value, declared[key].type | None)
        require(ok, f"sample.guidance_options.{key} must be {type_name(declared[key].type)}, got {value!r}")
    spec.resolve(s.guidance_options)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{key} {value!r} is unknown; choose one of {', '.join(choices)}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- typed, checked assignment ----------------------------------------------------------------

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a table"
    if origin in (list, tuple):
        return f"a list of {_PLURALS.get(typing.get_args(tp)[0], 'values')}"
    return _NAMES.get(tp, str(tp))


def convert_value(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, converted value) for a JSON/TOML value against an annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = convert_value(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    if origin is dict:  # a table of named values, checked by whoever declares its keys
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return ok, dict(value) if ok else value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_tp, *_) = typing.get_args(tp)
        items = []
        for v in value:
            ok, out = convert_value(v, item_tp)
            if not ok:
                return False, value
            items.append(out)
        return True, tuple(items) if origin is tuple else items
    raise TypeError(f"unsupported config annotation {tp!r}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unknown_key_error(kind: str, name: str, choices: list[str]) -> UsageError:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else f"valid {kind}s: {', '.join(choices)}"
    return UsageError(f"unknown config {kind} {name!r}; {hint}")


# The checked assignment below works on any config made of dataclass sections (this module's
# Config, ddgan.config.DDGANConfig): ``sections`` maps a section name to its dataclass and
# ``top_level`` names plain string keys beside the sections.

def section_keys(sections: dict[str, type], top_level: tuple[str, ...] = ()) -> list[str]:
    """Every dotted key of a sectioned config, e.g. 'train.lr', then the top-level keys."""
    return [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)] + list(top_level)


def sections_to_dict(config: Any, sections: dict[str, type]) -> dict[str, Any]:
    """The sections of a config as a JSON-able dict (tuples become lists)."""
    return {name: _plain(dataclasses.asdict(getattr(config, name))) for name in sections}


def assign(config: Any, sections: dict[str, type], dotted: str, value: Any, source: str = "override",
           top_level: tuple[str, ...] = ()) -> None:
    """Assign ``section.key = value`` on a sectioned config, checking that the key exists and the type fits."""
    if dotted in top_level:
        ok, value = convert_value(value, str | None)
        require(ok, f"{dotted} must be a string path ({source}), got {value!r}")
        setattr(config, dotted, value)
        return
    section, _, key = dotted.partition(".")
    if section not in sections:
        if not key:
            raise unknown_key_error("key", dotted, section_keys(sections, top_level))
        raise unknown_key_error("section", section, list(sections) + list(top_level))
    hints = _field_types(sections[section])
    if key not in hints:
        raise unknown_key_error("key", dotted, [k for k in section_keys(sections) if k.startswith(section + ".")])
    ok, converted = convert_value(value, hints[key])
    if not ok:
        raise UsageError(f"config key {dotted} ({source}) must be {type_name(hints[key])}, got {value!r}")
    setattr(getattr(config, section), key, converted)


def assign_nested(config: Any, sections: dict[str, type], nested: dict[str, Any], source: str = "config",
                  top_level: tuple[str, ...] = ()) -> Any:
    """Apply a nested dict {section: {key: value}, top_level_key: ...} onto config in place; returns it."""
    require(isinstance(nested, dict), f"{source} must hold a table of sections")
    for section, body in nested.items():
        if section in top_level:
            assign(config, sections, section, body, source, top_level)
            continue
        if section not in sections:
            raise unknown_key_error("section", section, list(sections) + list(top_level))
        require(isinstance(body, dict), f"[{section}] in {source} must be a table of keys, got {body!r}")
        for key, value in body.items():
            assign(config, sections, f"{section}.{key}", value, source, top_level)
    return config


def set_value(config: Config, dotted: str, value: Any, source: str = "override") -> None:
    """Assign ``section.key = value`` on config, checking that the key exists and the type fits."""
    assign(config, SECTIONS, dotted, value, source, TOP_LEVEL)


def apply_overrides(config: Config, nested: dict[str, Any], source: str = "config") -> Config:
    """Apply a nested dict {section: {key: value}, out_dir: ...} onto config in place; returns it."""
    return assign_nested(config, SECTIONS, nested, source, TOP_LEVEL)


def parse_value(text: str) -> Any:
    """A command-line value as a TOML literal (3, 2e-4, true, [0, 3], "x"); else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """'section.key=value' -> (dotted key, value)."""
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--")
    require(bool(sep) and bool(key), f"override {item!r} is not of the form section.key=value; e.g. train.lr=1e-4")
    return key, parse_value(raw.strip())


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    require(path.is_file(), f"config file {path} {'is a folder' if path.is_dir() else 'does not exist'}; pass a TOML "
                            "file such as configs/fmnist_cfg.toml")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not text (not UTF-8); pass a TOML file") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults ← TOML file (if any) ← ``section.key=value`` overrides, then validated."""
    config = Config()
    if path is not None:
        apply_overrides(config, load_toml(path), source=str(path))
    for item in overrides:
        key, value = parse_override(item)
        set_value(config, key, value, source=f"--set {item}")
    follow_data(config)
    config.validate()
    return config


def follow_data(config: Config) -> None:
    """model.image_size / in_channels follow data.resolution / channels where those are set
    (the data decides; training sets num_classes too once the data is loaded)."""
    d, m = config.data, config.model
    config.model = dataclasses.replace(m, image_size=d.resolution or m.image_size,
                                       in_channels=d.channels or m.in_channels)


def load_json_config(path: str | Path) -> Config:
    """A resolved config.json, as written next to every run."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read config {path} ({exc}); restore it or start a new run") from None
    config = Config.from_dict(d, source=str(path))
    config.validate()
    return config


def all_keys() -> list[str]:
    """Every dotted key a user may set, e.g. 'train.lr'."""
    return section_keys(SECTIONS, TOP_LEVEL)
