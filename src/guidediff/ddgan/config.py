"""Configuration of a DDGAN run: dataclass sections, per-dataset presets, TOML files and checked
``section.key=value`` overrides (the same typed checks as guidediff.config), saved resolved as
``config.json`` and inside every checkpoint, so a checkpoint loads from its path alone.

Resolution order: preset for data.name ← TOML file ← overrides ← the train-ddgan flags.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidediff.config import assign, assign_nested, load_toml, parse_override, section_keys, sections_to_dict
from guidediff.errors import UsageError, require
from guidediff.lr_schedule import DECAYS

DATASETS = ("fmnist", "stacked-fmnist", "grid25")
TOY_DATASETS = ("grid25",)

# shape of one sample and number of classes, per dataset (what the networks are built for)
_SPECS: dict[str, tuple[tuple[int, ...], int]] = {
    "fmnist": ((1, 28, 28), 10),
    "stacked-fmnist": ((3, 28, 28), 1000),
    "grid25": ((2,), 5),
}


def is_image_folder(name: str) -> bool:
    """Any data.name but the built-in datasets' is the path of an image folder."""
    return name not in DATASETS


def data_spec(data: DataSection) -> tuple[tuple[int, ...], int]:
    """(sample shape, number of classes) of a config's data: a built-in dataset's own, or an image
    folder's (channels, resolution, resolution) and its class sub-folders (data.class_names, filled
    when its training starts)."""
    if not is_image_folder(data.name):
        return _SPECS[data.name]
    return (data.channels, data.resolution, data.resolution), len(data.class_names)


@dataclass
class DataSection:
    """name: fmnist | stacked-fmnist | grid25, or the path of your own image folder (one sub-folder
    per class, PNG/JPEG of any size, resized and centre-cropped to `resolution` pixels with
    `channels` 1 or 3; a train/ sub-folder is used when there is one). conditional: class-conditional
    G and D (labels of the dataset; grid25 has 5 row classes, a folder one per sub-folder).
    class_names: an image folder's class sub-folders in label order, filled when its training
    starts and saved with the run. toy_size: points drawn once (seeded) for 2-D data."""

    name: str = "fmnist"
    data_dir: str | None = None
    conditional: bool = False
    hflip: bool = False
    resolution: int = 0
    channels: int = 0
    class_names: list[str] = field(default_factory=list)
    skip_bad_images: bool = False
    toy_size: int = 100_000


@dataclass
class DiffusionSection:
    """T denoising steps on DDGAN's VP schedule (β_min, β_max); see ddgan.schedule."""

    T: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0


@dataclass
class GeneratorSection:
    """Images: an ADM UNet (base_channels, channel_mult, num_res_blocks, attention_resolutions)
    whose embedding adds mapping(z) (mapping_layers linear layers); 2-D: an MLP (hidden, layers)
    on `fourier` octaves of Fourier features of x_t (see generator.fourier_features)."""

    nz: int = 100
    base_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [7])
    mapping_layers: int = 3
    hidden: int = 128
    layers: int = 3
    fourier: int = 4


@dataclass
class DiscriminatorSection:
    """Images: one residual down block per channel_mult entry; minibatch_std > 0 adds the minibatch
    standard deviation over groups of that size and a last conv (DDGAN's own discriminator: 4),
    zero_init_residual starts each block's second conv at zero (as there). 2-D: an MLP (hidden,
    layers) on `fourier` octaves of Fourier features of x_{t−1}."""

    base_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    minibatch_std: int = 0
    zero_init_residual: bool = False
    hidden: int = 128
    layers: int = 3
    fourier: int = 6


@dataclass
class TrainSection:
    """Adam(β1, β2) for G and D; R1 weight r1_gamma applied every r1_every steps (lazy R1, scaled by
    r1_every as in StyleGAN2 so the average penalty does not change); r2_gamma > 0 adds the same
    penalty on generated x_{t−1} (R2) on those steps; EMA of G with warm-up.
    Training stops at `steps` or after `minutes` of wall time, whichever comes first.
    lr_schedule: constant | cosine | linear. Not constant: both rates fall from lr_g and lr_d to
    lr_final times them over the run's first lr_decay_steps steps, then stay there (DDGAN's own code
    anneals both along a cosine over its whole run, to 1e-5). A run keeps its schedule when resumed.
    mixed_precision: auto (bf16 on CUDA) | no | bf16; R1 is always computed in float32.
    finite_check: step (the host reads every loss: one sync per step, stops before a bad update) |
    log (no host sync between log steps: a device flag, read at log and checkpoint steps) | auto
    (log on CUDA, step on the CPU); see ddgan.train.
    cuda_graph: auto (the default: the step captured in CUDA graphs on CUDA; with r1_every 4 it made
    1.71x the images/s of the classic step with R1 every step, 1.77x that of the classic step with
    r1_every 4, on an H200 with the previous preset's discriminator, benchmarks/results/ddgan_speed.json;
    the classic step elsewhere) | false (the classic step) | true | "eager" (the graph-ready step, uncaptured);
    see ddgan.step."""

    batch_size: int = 128
    lr_g: float = 1.6e-4
    lr_d: float = 1.25e-4
    beta1: float = 0.5
    beta2: float = 0.9
    r1_gamma: float = 0.02
    r1_every: int = 1
    r2_gamma: float = 0.0
    ema_decay: float = 0.999
    lr_schedule: str = "constant"
    lr_decay_steps: int = 0
    lr_final: float = 0.1
    steps: int = 20_000
    minutes: float | None = None
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 2_000
    keep_last: int = 2
    mixed_precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    finite_check: str = "auto"
    cuda_graph: bool | str = "auto"
    device: str = "auto"


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "diffusion": DiffusionSection,
    "generator": GeneratorSection,
    "discriminator": DiscriminatorSection,
    "train": TrainSection,
}


@dataclass
class DDGANConfig:
    data: DataSection = field(default_factory=DataSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    discriminator: DiscriminatorSection = field(default_factory=DiscriminatorSection)
    train: TrainSection = field(default_factory=TrainSection)

    @property
    def is_toy(self) -> bool:
        return self.data.name in TOY_DATASETS

    @property
    def image_size(self) -> int:
        """The side of the images in pixels: 28 for the built-in image data, data.resolution for a folder."""
        return self.data.resolution if is_image_folder(self.data.name) else 28

    def to_dict(self) -> dict[str, Any]:
        return sections_to_dict(self, SECTIONS)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> DDGANConfig:
        """A config from a nested dict; the preset of its data.name fills what is missing, except the
        discriminator options that came later (minibatch_std, zero_init_residual): a saved config
        without them describes a discriminator without them."""
        name = (d.get("data") or {}).get("name", DataSection.name) if isinstance(d, dict) else DataSection.name
        config = preset(name)
        saved_d = d.get("discriminator") if isinstance(d, dict) else None
        if isinstance(saved_d, dict):
            # a config saved before these options existed describes a discriminator without them,
            # whatever today's preset says
            config.discriminator.minibatch_std = 0 if "minibatch_std" not in saved_d else config.discriminator.minibatch_std
            if "zero_init_residual" not in saved_d:
                config.discriminator.zero_init_residual = False
        config = apply_nested(config, d, source)
        config.validate()
        return config

    def validate(self) -> None:
        """UsageError naming the fix for well-typed but unusable values."""
        dt, df, g, dsc, t = self.data, self.diffusion, self.generator, self.discriminator, self.train
        if is_image_folder(dt.name):
            require(dt.resolution > 0 or Path(dt.name).expanduser().is_dir(),
                    f"data.name {dt.name!r} is neither one of {', '.join(DATASETS)} nor an image folder that exists; "
                    "check the name or the path")
            require(dt.resolution >= 8 and dt.channels in (1, 3),
                    f"data.name {dt.name!r} is not one of {', '.join(DATASETS)}, so it is read as an image folder, "
                    f"which needs data.resolution (pixels, >= 8; got {dt.resolution}) and data.channels (1 or 3; got "
                    f"{dt.channels}): pass --resolution 32 --channels 3, say")
        else:
            own_shape = data_spec(dt)[0]
            own_size, own_channels = (own_shape[-1], own_shape[0]) if len(own_shape) == 3 else (0, 0)
            require(dt.resolution in (0, own_size) and dt.channels in (0, own_channels) and not dt.class_names,
                    f"data.resolution, data.channels and data.class_names are for image folders; {dt.name} has its own "
                    "shape and classes: leave them out")
        require(df.T >= 1, f"diffusion.T must be >= 1, got {df.T}")
        require(0 < df.beta_min < df.beta_max, f"need 0 < diffusion.beta_min < diffusion.beta_max, got "
                f"{df.beta_min} and {df.beta_max}")
        for section, names in ((g, ("nz", "base_channels", "num_res_blocks", "mapping_layers", "hidden", "layers")),
                               (dsc, ("base_channels", "hidden", "layers")),
                               (t, ("batch_size", "steps", "r1_every", "log_every", "checkpoint_every",
                                    "keep_last")),
                               (dt, ("toy_size",))):
            for name in names:
                value = getattr(section, name)
                require(value >= 1, f"{_section_name(section)}.{name} must be >= 1, got {value}")
        require(g.fourier >= 0 and dsc.fourier >= 0, "generator.fourier and discriminator.fourier must be >= 0")
        require(len(g.channel_mult) >= 1 and min(g.channel_mult) >= 1,
                f"generator.channel_mult must hold positive integers, got {g.channel_mult}")
        require(len(dsc.channel_mult) >= 1 and min(dsc.channel_mult) >= 1,
                f"discriminator.channel_mult must hold positive integers, got {dsc.channel_mult}")
        blocks_that_fit = max(self.image_size.bit_length() - 1, 0)  # ⌊log2(size)⌋: each block halves the side
        require(self.is_toy or len(dsc.channel_mult) <= blocks_that_fit,
                f"discriminator.channel_mult has {len(dsc.channel_mult)} blocks; each halves the "
                f"{self.image_size}×{self.image_size} input, so at most {blocks_that_fit} fit")
        require(isinstance(dsc.minibatch_std, int) and not isinstance(dsc.minibatch_std, bool)
                and (dsc.minibatch_std == 0 or dsc.minibatch_std >= 2),
                f"discriminator.minibatch_std must be 0 (off) or a group size >= 2 (DDGAN uses 4), "
                f"got {dsc.minibatch_std!r}")
        require(dsc.minibatch_std == 0 or t.batch_size % dsc.minibatch_std == 0,
                f"discriminator.minibatch_std {dsc.minibatch_std} must divide train.batch_size {t.batch_size}; "
                f"use a batch size divisible by {dsc.minibatch_std}, or --set discriminator.minibatch_std= a divisor "
                "of it (>= 2) or 0 (off)")
        require(isinstance(dsc.zero_init_residual, bool),
                f"discriminator.zero_init_residual must be true or false, got {dsc.zero_init_residual!r}")
        require(not self.is_toy or (dsc.minibatch_std == 0 and not dsc.zero_init_residual),
                "discriminator.minibatch_std and discriminator.zero_init_residual are options of the image "
                "discriminator; the 2-D data's MLP discriminator has neither")
        for name in ("lr_g", "lr_d"):
            value = getattr(t, name)
            require(value > 0 and math.isfinite(value), f"train.{name} must be a positive number, got {value}")
        require(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, f"train.beta1 and train.beta2 must lie in [0, 1), got "
                f"{t.beta1} and {t.beta2}")
        require(t.r1_gamma >= 0, f"train.r1_gamma must be >= 0 (0 turns R1 off), got {t.r1_gamma}")
        require(t.r2_gamma >= 0, f"train.r2_gamma must be >= 0 (0 turns R2 off), got {t.r2_gamma}")
        require(0 <= t.ema_decay < 1, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
        require(t.lr_schedule in DECAYS, f"train.lr_schedule {t.lr_schedule!r} is unknown; choose one of "
                f"{', '.join(DECAYS)}")
        require(t.lr_schedule == "constant" or t.lr_decay_steps >= 1,
                f"train.lr_schedule = {t.lr_schedule!r} decays over train.lr_decay_steps steps, which is "
                f"{t.lr_decay_steps}; set it (--set train.lr_decay_steps=N, often train.steps)")
        require(0 <= t.lr_final <= 1, f"train.lr_final is the fraction of the rates left after the decay; it must "
                f"lie in [0, 1], got {t.lr_final}")
        require(t.minutes is None or 0 < t.minutes < float("inf"), f"train.minutes must be a positive number, got {t.minutes}")
        require(t.mixed_precision in ("auto", "no", "bf16"),
                f"train.mixed_precision {t.mixed_precision!r} is unknown; choose auto, no or bf16")
        require(isinstance(t.channels_last, bool) or t.channels_last == "auto",
                f"train.channels_last must be true, false or \"auto\", got {t.channels_last!r}")
        require(t.finite_check in ("auto", "step", "log"),
                f"train.finite_check {t.finite_check!r} is unknown; choose auto, step or log")
        require(isinstance(t.cuda_graph, bool) or t.cuda_graph in ("auto", "eager"),
                f"train.cuda_graph must be true, false, \"auto\" or \"eager\", got {t.cuda_graph!r}")
        require(t.finite_check != "step" or t.cuda_graph in ("auto", False),
                f"train.finite_check=\"step\" reads every loss on the host, which train.cuda_graph={json.dumps(t.cuda_graph)} "
                "cannot; set train.finite_check=\"log\" or train.cuda_graph=false")
        require(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {t.device!r}")
        if not self.is_toy:
            self.unet_config(channels=1, num_classes=0).validate()


    def unet_config(self, channels: int, num_classes: int):
        """The generator's UNetConfig for the data's images (image_size) with `channels` channels."""
        from guidediff.nets.unet import UNetConfig

        g = self.generator
        wide = all(g.base_channels * m % 64 == 0 for m in g.channel_mult)
        heads = {"head_channels": 64} if wide else {"num_heads": 1}
        return UNetConfig.from_dict(dict(
            image_size=self.image_size, in_channels=channels, base_channels=g.base_channels, channel_mult=list(g.channel_mult),
            num_res_blocks=g.num_res_blocks, attention_resolutions=list(g.attention_resolutions), dropout=0.0,
            num_classes=num_classes, **heads))


def _section_name(section: Any) -> str:
    return next(name for name, cls in SECTIONS.items() if isinstance(section, cls))


def preset(name: str) -> DDGANConfig:
    """Defaults for a dataset (its configs/ddgan_*.toml says the same):

    - fmnist / stacked-fmnist: UNet G 64·(1, 2, 2), 2 blocks, attention at 7; batch 256,
      Adam(0.5, 0.9), lr_D 1.25e-4, R1 γ = 0.02 every 4th step (DDGAN's CIFAR-10 settings, lazy R1),
      and lr_G 5e-5 instead of DDGAN's 1.6e-4: at 1.6e-4 our G outpaced D, whose logits sat at
      chance from about step 400 (benchmarks/results/ddgan_recipe.json).
    - both: D shaped like DDGAN's own, 64·(2, 4, 8, 8) with the minibatch standard deviation over
      groups of 4 and zero-initialised residual convs. With lr_G 5e-5 it reached FID-FMNIST 2.55 at
      11.4k steps at T = 4, where the previous recipe had 6.86 at 10.5k (ddgan_recipe.json); on
      stacked Fashion-MNIST it covered 984 modes (KL 0.59) at 13,670 steps, where the plain
      64·(1, 2, 4) covered 672 (KL 1.93) at the same steps (ddgan_long_runs.json). At about 1,100
      steps the plain D had led (571 modes against 343): DDGAN's D starts slower.
    - an image folder: the image settings above; load_config, which knows the resolution, adds
      horizontal flips and puts the generator's attention at the largest of its levels up to 16
      pixels (the bottom one when none is): at 16 for 32- and 64-pixel images (DDGAN's CIFAR-10
      generator attends at 16), unless the config names them.
    - grid25: T = 2; MLPs of width 64 and depth 3 on Fourier features (4 octaves for G's x_t, 6 for
      D's x_{t−1}), nz = 2; batch 256, lr 1e-3 for both, R1 γ = 0.01 and R2 γ = 0.01 every step,
      10k steps (about 100 s on one CPU core), float32 (the modes are 0.018 wide: bf16 would blur them).
    """
    config = DDGANConfig(data=DataSection(name=name))
    if name not in TOY_DATASETS:  # the image data, your own folders too
        config.train = TrainSection(batch_size=256, lr_g=5e-5, r1_every=4)
        config.discriminator = DiscriminatorSection(channel_mult=[2, 4, 8, 8], minibatch_std=4, zero_init_residual=True)
    if name in TOY_DATASETS:
        config.diffusion.T = 2
        config.generator = GeneratorSection(nz=2, hidden=64, layers=3, fourier=4)
        config.discriminator = DiscriminatorSection(hidden=64, layers=3, fourier=6)
        config.train = TrainSection(batch_size=256, lr_g=1e-3, lr_d=1e-3, r1_gamma=0.01, r2_gamma=0.01,
                                    ema_decay=0.999, steps=10_000, log_every=500, checkpoint_every=2500,
                                    mixed_precision="no")
    return config


def apply_nested(config: DDGANConfig, nested: dict[str, Any], source: str = "config") -> DDGANConfig:
    """Set {section: {key: value}} on config in place (checked keys and types); returns it."""
    return assign_nested(config, SECTIONS, nested, source)


def all_keys() -> list[str]:
    return section_keys(SECTIONS)


def set_value(config: DDGANConfig, dotted: str, value: Any, source: str = "override") -> None:
    """Assign section.key = value, checking that the key exists and the value has its type."""
    assign(config, SECTIONS, dotted, value, source)


def load_config(data: str | None = None, path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> DDGANConfig:
    """preset(data or the file's data.name) ← TOML file ← 'section.key=value' overrides, validated."""
    nested = load_toml(path) if path is not None else {}
    file_data = (nested.get("data") or {}).get("name")
    if data is not None and file_data is not None and data != file_data:
        raise UsageError(f"--data {data} disagrees with data.name = {file_data!r} in {path}; drop one of them")
    config = preset(data or file_data or DataSection.name)
    apply_nested(config, nested, str(path))
    given = {f"{section}.{key}" for section, table in nested.items() if isinstance(table, dict) for key in table}
    for item in overrides:
        key, value = parse_override(item)
        set_value(config, key, value, source=f"--set {item}")
        given.add(key)
    require("data.class_names" not in given, "data.class_names is what a run on an image folder saves of the "
            "folder's class sub-folders; leave it out (the folder decides it)")
    if is_image_folder(config.data.name):
        _folder_defaults(config, given)
    config.validate()
    return config


def _folder_defaults(config: DDGANConfig, given: set[str]) -> None:
    """An image folder's defaults that depend on its resolution, where the config did not name them:
    horizontal flips, and the generator's attention at its largest level up to 16 pixels (else its
    bottom level)."""
    if "data.hflip" not in given:
        config.data.hflip = True
    res = config.data.resolution
    if "generator.attention_resolutions" not in given and res >= 8:
        levels = [res // 2 ** i for i in range(len(config.generator.channel_mult))]
        config.generator.attention_resolutions = [max((r for r in levels if r <= 16), default=levels[-1])]
