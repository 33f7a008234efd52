"""ADM-style UNet ε-predictor (Dhariwal & Nichol 2021), the architecture the CFG paper reuses.

`UNet(config)(z, lam, c) -> eps_hat` follows the project's denoiser contract: z [B, C, H, W] with
C = in_channels + extra_input_channels (the caller concatenates e.g. VDM's Fourier features),
lam float [B] the raw log-SNR, c int64 [B] in 0..num_classes where num_classes is the null token ∅.
Images must be square (H = W = image_size); the config validates that every level is reached.

The downsampling half plus the middle block is `UNetEncoder`, reused by the noisy classifier.

Reference config for Fashion-MNIST (`UNetConfig.fmnist()`): 28×28×1, base 64 channels,
channel_mult (1, 2, 2) → resolutions 28, 14, 7 with 64, 128, 128 channels, 2 residual blocks per
level, self-attention at 14 and 7 (64-channel heads), BigGAN-style resblock up/down, scale-shift
norm, dropout 0.1, 10 classes + null token: 7,992,961 parameters (8.0 M).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from guidediff.errors import UsageError, require
from guidediff.nets.layers import (
    AttentionBlock,
    Downsample,
    EmbSequential,
    LamClassEmbedding,
    ResBlock,
    Upsample,
    conv3x3,
    count_parameters,
    group_norm,
    zero_module,
)

__all__ = ["UNetConfig", "UNetEncoder", "UNet", "count_parameters"]


@dataclass
class UNetConfig:
    """Architecture of the ADM-style UNet. All fields are JSON-serialisable (see to_dict/from_dict).

    image_size: side of the square input; must be divisible by 2^(len(channel_mult) - 1).
    channel_mult: channels per level as multiples of base_channels; level i has resolution
        image_size / 2^i.
    attention_resolutions: resolutions (in pixels, e.g. (14, 7)) whose blocks get self-attention;
        each must be one of the levels' resolutions. The middle block always has attention.
    head_channels: channels per attention head (ADM's best setting, 64); num_heads > 0 overrides it
        with a fixed number of heads at every resolution.
    num_classes: 0 for an unconditional model; otherwise class indices 0..num_classes-1 plus the
        null token num_classes (for classifier-free guidance).
    extra_input_channels: channels the caller concatenates to z (VDM's Fourier features).
    out_channels: None means in_channels.
    resblock_updown: resample inside residual blocks (ADM/BigGAN, default, what ADM's best models
        use) instead of a stride-2 conv / nearest+conv.
    """

    image_size: int = 28
    in_channels: int = 1
    out_channels: int | None = None
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (14, 7)
    head_channels: int = 64
    num_heads: int = 0
    dropout: float = 0.0
    num_classes: int = 0
    extra_input_channels: int = 0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def fmnist(cls, num_classes: int = 10, **overrides: Any) -> UNetConfig:
        """Fashion-MNIST reference: 28→14→7 at 64/128/128 channels, attention at 14 and 7 (8.0 M params)."""
        cfg = dict(
            image_size=28, in_channels=1, base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
            attention_resolutions=(14, 7), head_channels=64, dropout=0.1, num_classes=num_classes,
        )
        cfg.update(overrides)
        return cls.from_dict(cfg)

    @classmethod
    def folder(cls, image_size: int, channels: int = 3, num_classes: int = 0, **overrides: Any) -> UNetConfig:
        """Defaults for a user's image folder, after DDPM's CIFAR-10 and ADM's 64×64 models.

        28: the Fashion-MNIST reference (8.0 M params with 1 channel).
        32: 128 channels, mult (1, 2, 2, 2) → 32..4, attention at 16 (42.9 M params, RGB).
        64: 128 channels, mult (1, 2, 2, 2) → 64..8, attention at 16 and 8 (44.2 M params, RGB).
        Other sizes halve while even and ≥ 8 (at most 6 levels), mult (1, 2, 2, 2) or, beyond 4
        levels, (1, 1, 2, 2, 4, 4); attention at resolutions ≤ 16 (or the bottom one).
        """
        require(image_size >= 4, f"image_size {image_size} is too small; use at least 4 pixels")
        if image_size == 28:
            cfg = cls.fmnist(num_classes=num_classes, in_channels=channels).to_dict()
        elif image_size == 32:
            cfg = dict(base_channels=128, channel_mult=(1, 2, 2, 2), attention_resolutions=(16,))
        elif image_size == 64:
            cfg = dict(base_channels=128, channel_mult=(1, 2, 2, 2), attention_resolutions=(16, 8))
        else:
            resolutions = [image_size]
            while resolutions[-1] % 2 == 0 and resolutions[-1] // 2 >= 8 and len(resolutions) < 6:
                resolutions.append(resolutions[-1] // 2)
            mults = ((1, 1, 2, 2, 4, 4) if len(resolutions) > 4 else (1, 2, 2, 2))[: len(resolutions)]
            attn = tuple(r for r in resolutions if r <= 16) or (resolutions[-1],)
            cfg = dict(base_channels=128, channel_mult=tuple(mults), attention_resolutions=attn)
        cfg.update(image_size=image_size, in_channels=channels, num_classes=num_classes)
        cfg.setdefault("dropout", 0.1)
        cfg.update(overrides)
        return cls.from_dict(cfg)

    # -- derived quantities ----------------------------------------------------------------
    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def input_channels(self) -> int:
        """Channels of the z the network receives: in_channels + extra_input_channels."""
        return self.in_channels + self.extra_input_channels

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def emb_dim(self) -> int:
        return 4 * self.base_channels

    def heads(self, channels: int) -> int:
        return self.num_heads if self.num_heads > 0 else channels // self.head_channels

    def validate(self) -> None:
        """Raise UsageError (naming the fix) unless the config builds a working network."""
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_classes", "extra_input_channels"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        require(self.output_channels >= 1,
                f"out_channels must be >= 1 (or None for in_channels), got {self.out_channels}")
        require(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
                f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        factor = 2 ** (len(self.channel_mult) - 1)
        require(
            self.image_size % factor == 0,
            f"image_size {self.image_size} is not divisible by 2^(len(channel_mult)-1) = {factor} for "
            f"channel_mult {self.channel_mult}; use fewer levels or an image size divisible by {factor}",
        )
        for r in self.attention_resolutions:
            require(
                r in self.resolutions,
                f"attention resolution {r} is never reached: the levels are at {self.resolutions}; "
                f"choose attention_resolutions among them",
            )
        attn_channels = {self.base_channels * self.channel_mult[-1]}
        attn_channels |= {self.base_channels * m for m, r in zip(self.channel_mult, self.resolutions)
                          if r in self.attention_resolutions}
        for ch in sorted(attn_channels):
            if self.num_heads > 0:
                require(ch % self.num_heads == 0,
                        f"attention over {ch} channels cannot be split into num_heads={self.num_heads}; "
                        f"choose num_heads dividing {ch}")
            else:
                require(self.head_channels >= 1 and ch % self.head_channels == 0,
                        f"attention over {ch} channels cannot be split into heads of head_channels="
                        f"{self.head_channels}; choose head_channels dividing {ch} or set num_heads")

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Config from a dict (e.g. a checkpoint's JSON); unknown keys and wrong types are UsageErrors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=3)
                hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(fields)}"
                raise UsageError(f"unknown UNet config key {key!r}; {hint}")
            kwargs[key] = _coerce(key, value, fields[key].default)
        return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a JSON value against the type of the field's default, converting lists to tuples."""
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int) or (default is None and key == "out_channels"):
        ok = (value is None and default is None) or (isinstance(value, int) and not isinstance(value, bool))
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        raise UsageError(f"UNet config key {key!r} has the wrong type: {value!r}; expected a value like {default!r}")
    return value


class UNetEncoder(nn.Module):
    """Input conv, downsampling levels and middle block (res → attn → res) of the ADM UNet.

    forward(z, lam, c) -> (h, skips, emb): h the bottom features [B, out_channels, r, r] with
    r = bottom_resolution, skips the activations the decoder consumes (input conv, every block),
    emb the λ/class embedding [B, 4·base_channels]. The noisy classifier pools h.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        base, emb_dim = config.base_channels, config.emb_dim
        self.embed = LamClassEmbedding(base, emb_dim, config.num_classes)
        self.input_conv = conv3x3(config.input_channels, base)
        self.down = nn.ModuleList()

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, config.dropout, config.use_scale_shift_norm, resample)

        ch, skip_channels = base, [base]
        last = len(config.channel_mult) - 1
        for level, (mult, r) in enumerate(zip(config.channel_mult, config.resolutions)):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, base * mult)]
                ch = base * mult
                if r in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.heads(ch)))
                self.down.append(EmbSequential(layers))
                skip_channels.append(ch)
            if level != last:
                self.down.append(EmbSequential([res(ch, ch, "down") if config.resblock_updown else Downsample(ch)]))
                skip_channels.append(ch)
        self.middle = EmbSequential([res(ch, ch), AttentionBlock(ch, config.heads(ch)), res(ch, ch)])
        self.out_channels = ch
        self.skip_channels = tuple(skip_channels)
        self.bottom_resolution = config.resolutions[-1]

    def forward(
        self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor | None = None,
        extra_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        emb = self.embed(lam, c)
        if extra_emb is not None:  # one more condition (e.g. the distilled student's w)
            emb = emb + extra_emb
        h = self.input_conv(z)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        return self.middle(h, emb), skips, emb


class UNet(nn.Module):
    """ADM-style UNet: forward(z, lam, c=None) -> eps_hat [B, out_channels, H, W].

    Weights of the last conv of every residual branch, every attention projection and the output
    conv start at zero (ADM), so a fresh model predicts ε̂ = 0. For a conditional model c=None means
    the null token for every sample; an unconditional model ignores c. The output has z's dtype
    (float32 under bf16 autocast when z is float32), so samplers can accumulate in full precision.
    No input checks in forward (they cost a sync); call check_inputs once on the user path.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.encoder = UNetEncoder(config)
        base, emb_dim = config.base_channels, config.emb_dim

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, config.dropout, config.use_scale_shift_norm, resample)

        ch, skips = self.encoder.out_channels, list(self.encoder.skip_channels)
        self.up = nn.ModuleList()
        levels = list(zip(config.channel_mult, config.resolutions))
        for level in reversed(range(len(levels))):
            mult, r = levels[level]
            for i in range(config.num_res_blocks + 1):
                layers: list[nn.Module] = [res(ch + skips.pop(), base * mult)]
                ch = base * mult
                if r in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.heads(ch)))
                if level > 0 and i == config.num_res_blocks:
                    layers.append(res(ch, ch, "up") if config.resblock_updown else Upsample(ch))
                self.up.append(EmbSequential(layers))
        assert not skips, "decoder must consume every encoder skip"
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(conv3x3(ch, config.output_channels)))

    def forward(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor | None = None,
                extra_emb: torch.Tensor | None = None) -> torch.Tensor:
        h, skips, emb = self.encoder(z, lam, c, extra_emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(z.dtype)

    def check_inputs(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor | None = None) -> None:
        """Raise UsageError naming the fix unless (z, lam, c) fit this network (syncs with the device)."""
        cfg = self.config
        require(z.dim() == 4, f"z must be [B, C, H, W], got shape {tuple(z.shape)}")
        require(z.is_floating_point(), f"z must be a float tensor, got {z.dtype}")
        b, ch, h, w = z.shape
        extra = f" ({cfg.in_channels} + {cfg.extra_input_channels} extra)" if cfg.extra_input_channels else ""
        require(ch == cfg.input_channels,
                f"z has {ch} channels but the model expects {cfg.input_channels}{extra}; "
                f"convert the images or build the model with in_channels={ch - cfg.extra_input_channels}")
        require(h == cfg.image_size and w == cfg.image_size,
                f"z is {h}x{w} but the model expects {cfg.image_size}x{cfg.image_size}; "
                f"resize the images to {cfg.image_size}x{cfg.image_size}")
        require(lam.shape == (b,) and lam.is_floating_point(),
                f"lam must be a float tensor of shape [{b}], got {lam.dtype} {tuple(lam.shape)}")
        if cfg.num_classes == 0 or c is None:
            return
        require(c.shape == (b,) and not c.is_floating_point() and not c.dtype == torch.bool,
                f"c must be an integer tensor of shape [{b}], got {c.dtype} {tuple(c.shape)}")
        if b:
            lo, hi = int(c.min()), int(c.max())
            require(lo >= 0 and hi <= cfg.num_classes,
                    f"class index out of range [{lo}, {hi}]; use 0..{cfg.num_classes - 1}, "
                    f"or {cfg.num_classes} for the null (unconditional) token")

    # -- persistence -----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNet:
        """Rebuild the network (fresh weights) from a config dict, e.g. a checkpoint's JSON."""
        return cls(UNetConfig.from_dict(d))
