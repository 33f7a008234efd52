"""The DDGAN training loop: two networks, two Adam optimizers, alternating steps (Xiao et al. 2022,
Algorithm in App. B). A dedicated loop rather than guidediff.train's single-loss one.

One step (``update.train_step``), for a batch x_0 with levels i ~ U{1..T} (λ_t = λ_i, λ_s = λ_{i−1}):
  real pair   (x_s, x_t) ~ q(x_s | x_0) q(x_t | x_s)                               schedule.forward_pair
  fake x_s    x_s' ~ q(x_s | x_t, x̂_0),  x̂_0 = G(x_t, z, λ_t, c),  z ~ N(0, I)      schedule.posterior_sample
  D step      softplus(−D(x_s, x_t)) + softplus(D(x_s', x_t)) [+ R1 on the real x_s, + R2 on x_s', float32]
  G step      softplus(−D(x_s'', x_t)) with a fresh z (non-saturating)
then the EMA of G. Randomness is a function of (seed, step), so --resume continues exactly.
ddgan.step runs that step per step number: as it is (train.cuda_graph = false), graph-ready, or
captured in CUDA graphs (the default on CUDA); this module loops over ddgan.step's DDGANStep.

A non-finite loss stops training with TrainingDiverged (a UsageError) that names the fix. With
train.finite_check = "step" (the default on the CPU) the host reads each loss and stops before the
optimizer step that would spread it, saving the last finite state. "log" (the default on CUDA)
keeps the loop free of host syncs: a device flag records the first bad step and the host reads it
at log and checkpoint steps, then stops and names the last good checkpoint (a checkpoint is only
written after the flag was read clean). Both give the same numbers while the losses are finite.

Run directory: config.json, log.jsonl, checkpoints/ckpt-XXXXXXX/ (guidediff.checkpoint format
with state.json "kind": "ddgan"; model.safetensors holds G.* and D.*, ema.safetensors the EMA
of G, optimizer.safetensors both optimizers), model.safetensors (the exported EMA generator) and
samples.png. Single device; multi-GPU is not implemented for DDGAN.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guidediff.ddgan.config import DDGANConfig, is_image_folder
from guidediff.ddgan.schedule import DiscreteVP
from guidediff.ddgan.update import Nets, NonFiniteLoss
from guidediff.errors import UsageError, require
from guidediff.lr_schedule import lr_factor, set_learning_rate
from guidediff.runtime import derive_seed, resolve_device

CHECKPOINTS = "checkpoints"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
KIND = "ddgan"
MODEL_FORMAT = "guidediff-ddgan-model-v1"


def _rate(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the step just taken (a device tensor in the graph modes: read at log steps only)."""
    return float(optimizer.param_groups[0]["lr"])


# What a resumed run may change: its length, time budget, device, step mode and finite check
# (train.cuda_graph, train.finite_check: the same training function, run and watched another way;
# the two are checked together), and whether an image folder's unreadable files are left out.
# A run on an image folder may also name the folder's new place (data.name).
RESUMABLE = ("train.steps", "train.minutes", "train.device", "train.cuda_graph", "train.finite_check",
             "data.skip_bad_images")


class TrainingDiverged(UsageError):
    """A loss became NaN or infinite; a checkpoint of the last finite state was written."""


# -- data --------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """The whole training set on the device: images uint8 [N, H, W, C] or points float [N, d]."""

    x: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    sample_shape: tuple[int, ...]
    toy: Any = None  # the GaussianMixture of 2-D data (for evaluation)
    class_names: list[str] = field(default_factory=list)

    @property
    def is_images(self) -> bool:
        return self.x.dtype == torch.uint8

    def batch(self, batch_size: int, g: torch.Generator, hflip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.x), (batch_size,), generator=g, device=self.x.device)
        if not self.is_images:
            return self.x[idx], self.labels[idx]
        # uint8 NHWC permuted to NCHW is already channels_last in memory; x = v/127.5 − 1.
        x = self.x[idx].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        if hflip:
            flip = torch.rand(batch_size, generator=g, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, self.labels[idx]


def load_training_data(config: DDGANConfig, device: torch.device) -> TrainingData:
    """The dataset of config.data on `device` (2-D points are drawn once from the mixture, seeded)."""
    d = config.data
    if config.is_toy:
        from guidediff.data.toy2d import load_toy

        mixture = load_toy(d.name)
        g = torch.Generator().manual_seed(derive_seed(config.train.seed, "toy-data"))
        x, y = mixture.sample(d.toy_size, generator=g)
        return TrainingData(x.float().to(device), y.to(device), mixture.num_classes, (x.shape[1],), mixture)
    from guidediff.data.images import load_dataset

    if is_image_folder(d.name):
        arrays = load_dataset(d.name, "train", resolution=d.resolution, channels=d.channels,
                              skip_bad=d.skip_bad_images)
    else:
        arrays = load_dataset(d.name, "train", d.data_dir)
    images = torch.from_numpy(arrays.images.copy()).to(device)
    labels = torch.from_numpy(arrays.labels.astype("int64")).to(device)
    return TrainingData(images, labels, arrays.num_classes, (arrays.channels, arrays.resolution, arrays.resolution),
                        class_names=list(arrays.class_names))


def adopt_folder_classes(config: DDGANConfig, data: TrainingData) -> None:
    """An image folder's classes into the run's config (data.class_names). A conditional run that
    already has classes must find the same ones: its labels are their order."""
    d = config.data
    if not is_image_folder(d.name):
        return

    def named(names: list[str]) -> str:
        return f"{len(names)} classes ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"

    require(not (d.conditional and d.class_names) or d.class_names == data.class_names,
            f"{d.name} now holds {named(data.class_names)}, but this run was trained on {named(d.class_names)}; "
            "restore the folder's class sub-folders (the labels follow their order), or start a new run with another --out")
    d.class_names = list(data.class_names)


# -- networks ----------------------------------------------------------------------------------

def build_networks(config: DDGANConfig, sample_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) for the data's shape; class-conditional when config.data.conditional."""
    from guidediff.ddgan.discriminator import ImageDiscriminator, MLPDiscriminator
    from guidediff.ddgan.generator import ImageGenerator, MLPGenerator

    k = num_classes if config.data.conditional else 0
    g, d = config.generator, config.discriminator
    if len(sample_shape) == 1:
        return (MLPGenerator(sample_shape[0], g.nz, g.hidden, g.layers, k, fourier=g.fourier),
                MLPDiscriminator(sample_shape[0], d.hidden, d.layers, k, fourier=d.fourier))
    channels = sample_shape[0]
    return (ImageGenerator(config.unet_config(channels, k), g.nz, g.mapping_layers),
            ImageDiscriminator(channels, d.base_channels, tuple(d.channel_mult), k, minibatch_std=d.minibatch_std,
                               zero_init_residual=d.zero_init_residual))


# -- checkpoints -------------------------------------------------------------------------------

def merge_optimizers(sd_g: dict[str, Any], sd_d: dict[str, Any]) -> dict[str, Any]:
    """Two optimizer state_dicts as one (D's parameter indices shifted after G's; each group
    tagged with its network), so guidediff.checkpoint stores them in one file."""
    shift = sum(len(group["params"]) for group in sd_g["param_groups"])
    state = {**sd_g["state"], **{int(k) + shift: v for k, v in sd_d["state"].items()}}
    groups = [{**group, "net": "G"} for group in sd_g["param_groups"]]
    groups += [{**group, "net": "D", "params": [p + shift for p in group["params"]]} for group in sd_d["param_groups"]]
    return {"state": state, "param_groups": groups}


def split_optimizers(merged: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inverse of merge_optimizers."""
    out = []
    for net in ("G", "D"):
        groups = [g for g in merged["param_groups"] if g.get("net") == net]
        indices = [p for g in groups for p in g["params"]]
        shift = min(indices) if indices else 0
        out.append({
            "state": {int(k) - shift: v for k, v in merged["state"].items() if int(k) in set(indices)},
            "param_groups": [{**{k: v for k, v in g.items() if k != "net"}, "params": [p - shift for p in g["params"]]}
                             for g in groups],
        })
    return out[0], out[1]


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One network's tensors ("G" or "D") out of a checkpoint's model part, where both are stored prefixed."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def save_ddgan_checkpoint(out_dir: Path, step: int, nets: Nets, ema, config: DDGANConfig,
                          extra: dict[str, Any]) -> Path:
    """ckpt-{step} under out_dir/checkpoints, written atomically by guidediff.checkpoint."""
    from guidediff.checkpoint import environment, save_checkpoint

    state = {"kind": KIND, "config": config.to_dict(), "ema": ema.meta(), **environment(), **extra}
    model = {**_prefixed("G", nets.G), **_prefixed("D", nets.D)}
    optimizer = merge_optimizers(nets.opt_g.state_dict(), nets.opt_d.state_dict())
    return save_checkpoint(Path(out_dir) / CHECKPOINTS, step, model=model, ema=ema.state_dict(), optimizer=optimizer,
                           state=state, keep_last=config.train.keep_last)


def read_ddgan_checkpoint(path: str | Path, parts: tuple[str, ...] = ("model", "ema", "optimizer"),
                          device: str | torch.device = "cpu") -> tuple[Path, dict[str, Any], dict[str, dict]]:
    """(checkpoint dir, state.json, {part: tensors}) of a DDGAN checkpoint or run directory."""
    from guidediff.checkpoint import STATE_FILE, TENSOR_FILES, read_tensors, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{ckpt / STATE_FILE} is unreadable ({exc.__class__.__name__}); resume from an older "
                         "checkpoint or train again") from None
    require(isinstance(state, dict) and state.get("kind") == KIND and "config" in state,
            f"{ckpt} is not a DDGAN checkpoint (state.json has no \"kind\": \"{KIND}\"); pass the run directory of "
            "`guidediff train-ddgan`")
    return ckpt, state, {part: read_tensors(ckpt / TENSOR_FILES[part], device) for part in parts}


def build_training(config: DDGANConfig, data: TrainingData, device: torch.device, *,
                   capturable: bool = False) -> tuple[Nets, Any]:
    """(Nets, EMA of G) for a run, seeded by train.seed: images channels_last on CUDA (or as
    train.channels_last says), Adam fused on CUDA and foreach elsewhere; ``capturable``: fused Adam
    with its step count and learning rate on the device, which a CUDA graph can replay."""
    from guidediff.ema import EMA

    t = config.train
    cuda = device.type == "cuda"
    channels_last = cuda if t.channels_last == "auto" else bool(t.channels_last)
    torch.manual_seed(t.seed)
    G, D = build_networks(config, data.sample_shape, data.num_classes)
    G, D = G.to(device), D.to(device)
    if channels_last and data.is_images:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 R1/R2 passes
        torch.backends.cudnn.allow_tf32 = True
    adam: dict[str, Any] = {"fused": True} if cuda else {"foreach": True}

    def lr(value: float) -> float | torch.Tensor:
        return torch.tensor(value, device=device) if capturable else value

    if capturable:
        adam["capturable"] = True
    opt_g = torch.optim.Adam(G.parameters(), lr=lr(t.lr_g), betas=(t.beta1, t.beta2), **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr(t.lr_d), betas=(t.beta1, t.beta2), **adam)
    ema = EMA(G, decay=t.ema_decay, warmup=True)
    G_run = torch.compile(G) if t.compile else G
    D_run = torch.compile(D) if t.compile else D
    return Nets(G, D, G_run, D_run, opt_g, opt_d), ema


# -- the loop ----------------------------------------------------------------------------------

@dataclass
class DDGANResult:
    out_dir: Path
    step: int
    stopped_by: str  # "steps" | "time"
    checkpoint: Path
    model_file: Path
    elapsed_s: float
    steps_per_sec: float | None
    last: dict[str, float]


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def train(config: DDGANConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          command: str | None = None, data: TrainingData | None = None) -> DDGANResult:
    """Train DDGAN as configured into out_dir (resuming from its latest checkpoint if asked)."""
    run = _Run(config, Path(out_dir), resume=resume, command=command, data=data)
    return run.loop(progress)


@dataclass
class _RunState:
    """What changes while a run goes: the step, the bookkeeping a checkpoint carries, and the
    current log window."""

    step: int = 0
    prior_time: float = 0.0  # training seconds of earlier invocations (resume)
    commands: list = field(default_factory=list)
    last: dict = field(default_factory=dict)  # the last log record (a checkpoint's "metrics")
    steps_per_sec: float | None = None  # of the last log window
    start: float = 0.0  # perf_counter when this invocation's loop began
    window_start: float = 0.0
    stopped_by: str = "steps"  # "steps" | "time"


class _Run:
    """One invocation of the DDGAN loop, in phases: restore, build, step, log, checkpoint, finish."""

    def __init__(self, config: DDGANConfig, out_dir: Path, *, resume: bool, command: str | None,
                 data: TrainingData | None):
        from guidediff.checkpoint import latest_checkpoint

        config.validate()
        t = config.train
        self.out_dir, self.ckpt_root = out_dir, out_dir / CHECKPOINTS
        self.device = resolve_device(t.device)
        self.cuda = self.device.type == "cuda"
        require(resume or latest_checkpoint(self.ckpt_root) is None,
                f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
        self.state = _RunState()
        saved_state = tensors = None
        if resume and latest_checkpoint(self.ckpt_root) is not None:
            # read before the data and networks are built: they follow the saved run's config
            config, saved_state, tensors = self._read_resume_point(config)
        self.config = config
        # the run's own precision (a resumed run keeps the one it was trained with), on this device
        mp = config.train.mixed_precision
        self.bf16 = mp == "bf16" or (mp == "auto" and self.cuda)
        self._build(data)
        if saved_state is not None:
            self._restore(saved_state, tensors)
        if command:
            self.state.commands.append(command)
        # after the restore: the step keeps a device copy of the (restored) EMA in graph modes
        self._make_step()

    # -- Restore: the saved run's config, then its weights and bookkeeping. ----------------------
    def _read_resume_point(self, config: DDGANConfig) -> tuple[DDGANConfig, dict[str, Any], dict[str, dict]]:
        _, state, tensors = read_ddgan_checkpoint(self.out_dir, device="cpu")
        saved = DDGANConfig.from_dict(state["config"], source=str(self.ckpt_root))
        # the run's architecture and data are fixed; the RESUMABLE keys come from this call's config
        for key in RESUMABLE:
            section, name = key.split(".")
            setattr(getattr(saved, section), name, getattr(getattr(config, section), name))
        if is_image_folder(saved.data.name) and is_image_folder(config.data.name):
            saved.data.name = config.data.name  # a run's image folder may have moved (its classes are checked)
        saved.validate()
        return saved, state, tensors

    def _restore(self, state: dict[str, Any], tensors: dict[str, dict]) -> None:
        from guidediff.checkpoint import load_optimizer_state, unflatten_optimizer

        nets, ema = self.nets, self.ema
        nets.G.load_state_dict(unprefixed("G", tensors["model"]))
        nets.D.load_state_dict(unprefixed("D", tensors["model"]))
        ema.load_state_dict(tensors["ema"])
        ema.load_meta(state["ema"])
        # this run's Adam implementation (fused, capturable, a device lr), the saved run's numbers
        sd_g, sd_d = split_optimizers(unflatten_optimizer(tensors["optimizer"], state["optimizer"]))
        load_optimizer_state(nets.opt_g, sd_g)
        load_optimizer_state(nets.opt_d, sd_d)
        self.state.step, self.state.prior_time = int(state["step"]), float(state.get("training_time_s", 0.0))
        self.state.commands = list(state.get("commands", []))

    # -- Build the data, networks, optimizers and the step. --------------------------------------
    def _build(self, data: TrainingData | None) -> None:
        from guidediff.ddgan.step import choose_step_mode

        d = self.config.data
        if is_image_folder(d.name) and data is None:
            # saved as an absolute path: the run's report and resume work from anywhere
            d.name = str(Path(d.name).expanduser().resolve())
            require(Path(d.name).is_dir(), f"{d.name}, the image folder this run trains on, "
                    f"{'is a file, not a folder' if Path(d.name).exists() else 'does not exist'}; pass the folder "
                    "with --data PATH (with --resume: its new place)")
        self.data = data if data is not None else load_training_data(self.config, self.device)
        adopt_folder_classes(self.config, self.data)
        self.mode = choose_step_mode(self.config, self.cuda)
        # graph modes keep Adam's step count and lr on the device, where a CUDA graph can replay them
        capturable = self.cuda and self.mode != "classic"
        self.nets, self.ema = build_training(self.config, self.data, self.device, capturable=capturable)

    def _make_step(self) -> None:
        from guidediff.ddgan.step import DDGANStep

        config, t = self.config, self.config.train
        lams = DiscreteVP.of(config.diffusion).lams(device=self.device)
        # finite_check "log": the step keeps the first bad step on the device (first_bad, −1: none yet)
        sync_each_step = t.finite_check == "step" or (t.finite_check == "auto" and not self.cuda)
        self.step_fn = DDGANStep(self.nets, self.ema, self.data, lams, config, mode=self.mode, bf16=self.bf16,
                                 sync_each_step=sync_each_step)

    # -- The loop. -------------------------------------------------------------------------------
    def loop(self, progress: bool) -> DDGANResult:
        t, s = self.config.train, self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / CONFIG_FILE).write_text(self.config.to_json() + "\n")
        s.start = s.window_start = time.perf_counter()
        deadline = s.start + 60.0 * t.minutes if t.minutes else math.inf
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=s.step, desc=f"ddgan T={self.config.diffusion.T}", unit="step")
        try:
            while s.step < t.steps:
                if time.perf_counter() >= deadline:
                    s.stopped_by = "time"
                    break
                self._step()
                if s.step % t.log_every == 0 or s.step == t.steps:
                    self._log(bar)
                if s.step % t.checkpoint_every == 0 and s.step < t.steps:
                    self._checkpoint()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return self._finish()

    def _step(self) -> None:
        self._schedule_learning_rates(self.state.step)
        try:
            self.step_fn(self.state.step)
        except NonFiniteLoss as bad:  # finite_check "step": caught before the optimizer step that would spread it
            raise self._diverged(f"{bad.what} became {bad.value} at step {self.state.step}") from None
        self.state.step += 1

    def _schedule_learning_rates(self, step: int) -> None:
        """Both rates at this step of train.lr_schedule, set before the step (outside any CUDA graph)."""
        t = self.config.train
        if t.lr_schedule == "constant":
            return
        # as DDGAN's annealing: the full rates at step 0, lr_final of them from step lr_decay_steps on
        factor = lr_factor(step - 1, warmup=0, total=t.lr_decay_steps, decay=t.lr_schedule, final=t.lr_final)
        set_learning_rate(self.nets.opt_g, t.lr_g * factor)
        set_learning_rate(self.nets.opt_d, t.lr_d * factor)

    # -- Log: one record per window of log_every steps. ------------------------------------------
    def _log(self, bar) -> None:
        s = self.state
        self._check_flag()
        now = time.perf_counter()
        s.steps_per_sec = self.step_fn.window_steps / max(now - s.window_start, 1e-9)
        s.last = self.step_fn.take_window()
        s.last.update(step=s.step, steps_per_sec=s.steps_per_sec, elapsed_s=s.prior_time + now - s.start,
                      lr_g=_rate(self.nets.opt_g), lr_d=_rate(self.nets.opt_d))
        with open(self.out_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(s.last) + "\n")
        s.window_start = now
        if bar is not None:
            bar.set_postfix(loss_d=f"{s.last['loss_d']:.3f}", loss_g=f"{s.last['loss_g']:.3f}")

    # -- Checkpoint: only after the divergence flag was read clean. ------------------------------
    def _checkpoint(self) -> Path:
        self._check_flag()
        return save_ddgan_checkpoint(self.out_dir, self.state.step, self.nets, self.ema, self.config, self._extra())

    def _extra(self) -> dict[str, Any]:
        """The bookkeeping a checkpoint's state.json carries besides the config and the EMA."""
        s = self.state
        return {"training_time_s": s.prior_time + time.perf_counter() - s.start, "metrics": s.last,
                "commands": s.commands}

    # -- Divergence: stop with an error that names the last good state and the fix. --------------
    def _check_flag(self) -> None:
        bad = int(self.step_fn.first_bad)  # the one host sync of finite_check "log", at log and checkpoint steps
        if bad >= 0:
            raise self._diverged(f"a loss became non-finite at step {bad} (found at step {self.state.step})")

    def _diverged(self, what: str) -> TrainingDiverged:
        from guidediff.checkpoint import latest_checkpoint

        step = self.state.step
        if _all_finite(self.nets.G) and _all_finite(self.nets.D):
            where = save_ddgan_checkpoint(self.out_dir, step, self.nets, self.ema, self.config, self._extra())
            saved = f"saved the last finite state (step {step}) to {where}"
        else:
            where = latest_checkpoint(self.ckpt_root)
            saved = ("the weights are no longer finite; " + (f"the last good checkpoint is {where}" if where else
                                                              "no checkpoint was written yet, so train again"))
        return TrainingDiverged(f"{what}; {saved}; lower train.lr_g/train.lr_d or raise train.r1_gamma "
                                "(--set train.lr_d=...), then continue with --resume")

    # -- Finish: the last checkpoint and the exported EMA generator. -----------------------------
    def _finish(self) -> DDGANResult:
        from guidediff.checkpoint import save_model

        s = self.state
        ckpt = self._checkpoint()
        # float32: the exported generator samples exactly what the run's EMA samples
        model_file = save_model(self.ema.state_dict(), self.config, self.out_dir / MODEL_FILE, "float32",
                                model_format=MODEL_FORMAT, step=s.step, training_time_s=self._extra()["training_time_s"],
                                commands=s.commands)
        elapsed = time.perf_counter() - s.start
        return DDGANResult(self.out_dir, s.step, s.stopped_by, ckpt, model_file, elapsed, s.steps_per_sec, s.last)
