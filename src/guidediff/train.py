"""The one training loop (Hugging Face Accelerate), shared by every model that trains on images.

``train(config, run_dir, loss_fn=...)`` owns the data, the optimizer (AdamW, linear warm-up),
gradient clipping, the EMA, logging (tqdm, TensorBoard, log.jsonl), sample grids, checkpoints and
resume. What is learned is a *loss closure* ``loss_fn(model, x, c, ctx) -> scalar``; the CFG
ε-loss is the default (``cfg_loss``), and later models pass their own.

Randomness is a function of (seed, step), never of the process layout: each step's batch indices,
flips and loss noise are drawn for the GLOBAL batch from a generator seeded by (seed, step) on
every rank, and each rank keeps its slice ``ctx.start:ctx.stop``. N processes therefore compute
what one process computes on the same global batch (DDP averages equal-sized per-rank mean
gradients into the full-batch gradient), and a resumed run continues exactly where it stopped.
Dropout uses the global RNG, reseeded per (seed, step, rank): resume is exact, but with dropout > 0
N processes draw other masks than one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from guidediff.checkpoint import (
    check_state_dict,
    environment,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from guidediff import distributed
from guidediff.config import Config
from guidediff.ema import EMA
from guidediff.errors import UsageError, require
from guidediff.sampling import derive_seed

CHECKPOINTS = "checkpoints"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"


@dataclass
class StepContext:
    """What a loss closure needs to draw its randomness for the global batch and keep its slice."""

    step: int
    generator: torch.Generator
    rank: int
    world_size: int
    global_batch: int

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    @property
    def start(self) -> int:
        return self.rank * self.local_batch

    @property
    def stop(self) -> int:
        return self.start + self.local_batch


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, StepContext], torch.Tensor]
SampleFn = Callable[[nn.Module, int, Path], None]


@dataclass
class TrainResult:
    """``images_per_sec`` = ``images / loop_s``: the global-batch images of THIS invocation's steps
    over the wall seconds of its training loop (first step to last, the sample hooks, logging and
    checkpoints inside the loop included; setup before it and the model export after it not).
    ``elapsed_s`` is the whole call, setup included."""

    run_dir: Path
    step: int
    finished: bool
    stopped_by: str
    final_loss: float | None
    images_per_sec: float | None
    checkpoint: Path | None
    elapsed_s: float
    model_file: Path | None = None
    images: int = 0
    loop_s: float = 0.0


def cfg_loss(config: Config) -> LossFn:
    """The CFG paper's training objective (Algorithm 1) as a loss closure: ε-loss at λ(u) with
    the label replaced by the null token with probability p_uncond."""
    from guidediff.losses import draw_noise, eps_loss
    from guidediff.schedules import make_schedule

    d = config.diffusion
    schedule = make_schedule(d.schedule, d.lam_min, d.lam_max)
    null_class = config.model.num_classes

    def loss_fn(model: nn.Module, x: torch.Tensor, c: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        noise = draw_noise(ctx.global_batch, tuple(x.shape[1:]), p_uncond=d.p_uncond if null_class else 0.0,
                           antithetic=d.antithetic, generator=ctx.generator, device=x.device)
        return eps_loss(model, x, c, schedule, noise.slice(ctx.start, ctx.stop), null_class=null_class)

    return loss_fn


def cfg_sample_fn(config: Config, max_classes: int = 10) -> SampleFn:
    """Sample grids from the EMA model during training: a few classes × sample.w, PNG per w."""
    from guidediff.sampling import generate, save_grids

    s = config.sample

    def sample_fn(ema_model: nn.Module, step: int, out_dir: Path) -> None:
        num_classes = config.model.num_classes
        classes = list(range(min(num_classes, max_classes))) or [-1]
        ws = s.w if num_classes else [0.0]
        device = next(ema_model.parameters()).device
        result = generate(ema_model, config, classes, list(ws), s.n, sampler=s.sampler, steps=s.steps,
                          seed=config.train.seed, device=device, eta=s.eta, v=s.v, progress=False)
        save_grids(out_dir, result, max_cols=s.n, prefix=f"step{step:07d}_")

    return sample_fn


def resolve_model_config(config: Config, data) -> list[str]:
    """Take image size, channels and class count from the data (a model cannot differ from it);
    returns notes on what changed."""
    want = {"image_size": data.resolution, "in_channels": data.channels, "num_classes": data.num_classes}
    notes = [f"model.{k} = {v} (from the data; the config said {getattr(config.model, k)})"
             for k, v in want.items() if getattr(config.model, k) != v]
    config.model = dataclasses.replace(config.model, **want)
    config.model.validate()
    config.data.resolution, config.data.channels = data.resolution, data.channels
    return notes


def _auto(value: bool | str, cuda: bool) -> bool:
    return cuda if value == "auto" else bool(value)


class _Batches:
    """Global batches of a dataset held whole on the device, as a function of the step:
    epoch e is a permutation seeded by (seed, e); its last partial batch is dropped."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, seed: int, channels_last: bool):
        require(len(images) >= batch, f"the dataset has {len(images)} images, fewer than train.batch_size={batch}; "
                "lower the batch size or add images")
        self.images, self.labels, self.batch, self.seed = images, labels, batch, seed
        self.per_epoch = len(images) // batch
        self.channels_last = channels_last
        self._epoch, self._perm = -1, None
        self._g = torch.Generator(device=images.device)

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._g.manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perm = torch.randperm(len(self.images), generator=self._g, device=self.images.device)
            self._epoch = epoch
        return self._perm[k * self.batch:(k + 1) * self.batch]

    def get(self, step: int, ctx: StepContext, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(step)[ctx.start:ctx.stop]
        # uint8 NHWC permuted to NCHW is channels_last already; x = v/127.5 − 1.
        x = self.images[idx].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        if not self.channels_last:
            x = x.contiguous()
        if hflip:
            flip = torch.rand(ctx.global_batch, generator=ctx.generator, device=x.device)[ctx.start:ctx.stop] < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, self.labels[idx]


def _read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", 0) <= up_to_step:
            records.append(rec)
    return records


def _make_accelerator(config: Config):
    from accelerate import Accelerator

    t = config.train
    want = t.device
    if want == "cuda":
        require(torch.cuda.is_available(), "train.device = cuda but no GPU is visible; set train.device=cpu")
    cpu = want == "cpu" or not torch.cuda.is_available()
    mp = t.mixed_precision
    if mp == "auto":
        mp = "no" if cpu else "bf16"
    try:
        return Accelerator(mixed_precision=mp, cpu=cpu, kwargs_handlers=[distributed.ddp_kwargs()])
    except ValueError as exc:
        raise UsageError(f"cannot set up training with mixed_precision={mp!r} ({exc}); set train.mixed_precision=no") from None


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer moments their parameter's memory layout: safetensors stores them
    contiguous, and fused AdamW refuses channels_last parameters with contiguous moments."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def train(
    config: Config,
    run_dir: str | Path,
    *,
    loss_fn: LossFn | None = None,
    net: nn.Module | None = None,
    dataset=None,
    sample_fn: SampleFn | None = None,
    resume: bool = False,
    time_limit_s: float | None = None,
    progress: bool = True,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train until ``config.train.steps`` (or ``time_limit_s``), checkpointing into run_dir.

    ``resume=True`` continues from run_dir's latest checkpoint when there is one (else starts).
    ``net`` defaults to the UNet of config.model; ``loss_fn`` to the CFG ε-loss; ``dataset`` (a
    DatasetArrays) to the one config.data names; ``sample_fn`` to CFG sample grids.
    """
    t0 = time.time()
    run_dir = Path(run_dir)
    tc = config.train
    accelerator = _make_accelerator(config)
    main = accelerator.is_main_process
    say = (log or print) if main else (lambda _msg: None)
    device = accelerator.device
    cuda = device.type == "cuda"
    world, rank = accelerator.num_processes, accelerator.process_index
    require(tc.batch_size % world == 0,
            f"train.batch_size={tc.batch_size} is not divisible by the {world} processes; pick a multiple of {world}")

    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        return _train(config, run_dir, accelerator, loss_fn, net, dataset, sample_fn, resume, time_limit_s,
                      progress, command, say, t0, device, cuda, world, rank, main)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _train(config, run_dir, accelerator, loss_fn, net, dataset, sample_fn, resume, time_limit_s, progress,
           command, say, t0, device, cuda, world, rank, main) -> TrainResult:
    tc = config.train
    ckpt_root = run_dir / CHECKPOINTS
    resume_from = latest_checkpoint(ckpt_root) if resume else None
    if not resume and latest_checkpoint(ckpt_root) is not None:
        raise UsageError(f"{run_dir} already holds a run (latest {latest_checkpoint(ckpt_root).name}); pass --resume "
                         "to continue it, or choose another output directory")

    if dataset is None:
        from guidediff.data.images import load_dataset

        d = config.data
        dataset = load_dataset(d.name, "train", data_dir=d.data_dir, resolution=d.resolution, channels=d.channels,
                               skip_bad=d.skip_bad_images)
    for note in resolve_model_config(config, dataset):
        say(f"note: {note}")

    torch.manual_seed(derive_seed(tc.seed, "init"))
    if net is None:
        from guidediff.nets.unet import UNet

        net = UNet(config.model)
    loss_fn = loss_fn or cfg_loss(config)
    sample_fn = sample_fn or cfg_sample_fn(config)
    channels_last = _auto(tc.channels_last, cuda)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cuda:
        torch.set_float32_matmul_precision("high")
    param_names = [name for name, _ in net.named_parameters()]

    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                  eps=tc.adam_eps, weight_decay=tc.weight_decay, fused=cuda)
    warmup = tc.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)

    step, prior_time, commands, metrics = 0, 0.0, [], {}
    ema_state = None
    if resume_from is not None:
        ck = load_checkpoint(resume_from, device="cpu")
        check_state_dict(ck.model, net.state_dict(), str(resume_from / "model.safetensors"))
        saved_names = ck.state["optimizer"].get("param_names")
        require(saved_names == param_names, f"{resume_from} was written for other parameters than this model has; "
                "resume with the config it was trained with")
        net.load_state_dict(ck.model)
        optimizer.load_state_dict(ck.optimizer_state())
        _match_state_layout(optimizer)
        scheduler.load_state_dict(ck.state["scheduler"])
        set_rng_state(ck.state["rng"])
        step = ck.step
        prior_time = float(ck.state.get("training_time_s", 0.0))
        commands = list(ck.state.get("commands", []))
        metrics = ck.state.get("metrics", {})
        ema_state = (ck.ema, ck.state["ema"])
        say(f"resuming {run_dir} from {resume_from.name} (step {step})")
    elif resume:
        say(f"no checkpoint in {ckpt_root} yet: starting a new run")
    if command:
        commands.append(command)

    ema = None
    if main:
        # before prepare: accelerate patches forward for autocast, which a deepcopy would carry over
        ema = EMA(net, tc.ema_decay, tc.ema_warmup)
        if ema_state is not None:
            check_state_dict(ema_state[0], ema.state_dict(), str(resume_from / "ema.safetensors"))
            ema.load_state_dict(ema_state[0])
            ema.load_meta(ema_state[1])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(config.to_json() + "\n")
        log_records = _read_log(run_dir / LOG_FILE, step)
        with open(run_dir / LOG_FILE, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in log_records)

    # the scheduler stays outside prepare: accelerate would step it once per process
    model, aopt, zero_grad = distributed.prepare(accelerator, net, optimizer)
    if _auto(tc.compile, cuda):
        model = torch.compile(model)

    images = torch.from_numpy(np.array(dataset.images, dtype=np.uint8, copy=True)).to(device)
    labels = torch.from_numpy(np.array(dataset.labels, dtype=np.int64, copy=True)).to(device)
    batches = _Batches(images, labels, tc.batch_size, tc.seed, channels_last)
    step_gen = torch.Generator(device=device)

    writer = None
    if main and tc.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step)
    bar = None
    if main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=step, unit="step", dynamic_ncols=True, desc="train")

    def checkpoint(at_step: int, elapsed: float) -> Path | None:
        path = None
        if main:
            state = {
                "config": config.to_dict(),
                "optimizer": {"param_names": param_names},
                "scheduler": scheduler.state_dict(),
                "ema": ema.meta(),
                "rng": rng_state(),
                **environment(),
                "commands": commands,
                "training_time_s": prior_time + elapsed,
                "metrics": metrics,
                "world_size": world,
                "images_seen": at_step * tc.batch_size,
            }
            path = save_checkpoint(ckpt_root, at_step, model=net.state_dict(), ema=ema.state_dict(),
                                   optimizer=optimizer.state_dict(), state=state, keep_last=tc.keep_last)
        accelerator.wait_for_everyone()
        return path

    loss_sum = torch.zeros((), device=device)
    grad_norm = torch.zeros((), device=device)
    n_acc = 0
    last_t, last_step = time.time(), step
    final_loss, ips, saved = None, None, None
    stopped_by = "steps"
    net.train()
    loop_t0, first_step = time.time(), step
    while step < tc.steps:
        ctx = StepContext(step, step_gen.manual_seed(derive_seed(tc.seed, "step", step)), rank, world, tc.batch_size)
        x, c = batches.get(step, ctx, config.data.hflip)
        torch.manual_seed(derive_seed(tc.seed, "dropout", step, rank))
        with accelerator.autocast():
            loss = loss_fn(model, x, c, ctx)
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(net.parameters(), tc.grad_clip)
        aopt.step()
        scheduler.step()
        zero_grad()
        if ema is not None:
            ema.update(net)
        step += 1
        loss_sum += loss.detach().float()
        n_acc += 1

        stop = False
        if time_limit_s is not None:
            over = time.time() - t0 >= time_limit_s
            if world > 1:
                # every rank must stop at the same step; agree once in a while (a collective)
                if step % 10 == 0:
                    flag = accelerator.reduce(torch.tensor(float(over), device=device), "max")
                    stop = bool(flag.item())
            else:
                stop = over
        last = step == tc.steps or stop

        if step % tc.log_every == 0 or last:
            mean_loss = float(accelerator.reduce(loss_sum / n_acc, "mean").item())
            now = time.time()
            ips = (step - last_step) * tc.batch_size / max(now - last_t, 1e-9)
            record = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm), "images_per_sec": ips,
                      "elapsed_s": prior_time + now - t0}
            final_loss, metrics = mean_loss, record
            last_t, last_step, n_acc = now, step, 0
            loss_sum.zero_()
            if not math.isfinite(mean_loss):
                raise UsageError(f"the loss became {mean_loss} at step {step}; lower train.lr (now {tc.lr}) or "
                                 "raise train.warmup_steps, then --resume from the last good checkpoint")
            if main:
                with open(run_dir / LOG_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for key in ("loss", "lr", "grad_norm", "images_per_sec"):
                        writer.add_scalar(f"train/{key}", record[key], step)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}", refresh=False)
        if bar is not None:
            bar.update(1)
        if main and (step % tc.sample_every == 0 or step == tc.steps):
            sample_fn(ema.module, step, run_dir / "samples")
        if step % tc.checkpoint_every == 0 or last:
            saved = checkpoint(step, time.time() - t0)
        if stop:
            stopped_by = "time_limit"
            break
    loop_s = time.time() - loop_t0
    # the run's rate, not the last log window's (`ips`): that window may hold one step and a sample hook
    images = (step - first_step) * tc.batch_size
    run_ips = images / max(loop_s, 1e-9) if images else None

    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    finished = step >= tc.steps
    model_file = None
    latest = latest_checkpoint(ckpt_root)
    if main and latest is not None:
        from guidediff.checkpoint import export_model

        # the EMA weights alone (float16): small enough to copy off a machine when a checkpoint is not
        model_file = export_model(latest, run_dir / MODEL_FILE)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir=run_dir, step=step, finished=finished, stopped_by=stopped_by, final_loss=final_loss,
                       images_per_sec=run_ips, checkpoint=saved or latest_checkpoint(ckpt_root),
                       elapsed_s=time.time() - t0, model_file=model_file, images=images, loop_s=loop_s)


def describe(result: TrainResult) -> str:
    """A few lines for the terminal: where the run is and how it went."""
    lines = [f"step {result.step} ({'finished' if result.finished else 'stopped by the time limit; rerun with --resume'})"]
    if result.final_loss is not None:
        lines.append(f"final loss: {result.final_loss:.5f}")
    if result.images_per_sec is not None:
        lines.append(f"throughput: {result.images_per_sec:.4g} images/s ({result.images} images in "
                     f"{result.loop_s:.1f} s of training loop, sample hooks and checkpoints included)")
    if result.checkpoint is not None:
        lines.append(f"checkpoint: {result.checkpoint}")
    if result.model_file is not None:
        lines.append(f"model (EMA): {result.model_file}")
    lines.append(f"elapsed: {result.elapsed_s:.1f} s")
    return "\n".join(lines)

