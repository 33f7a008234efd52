"""The one training loop (Hugging Face Accelerate), shared by every model that trains on images.

``train(config, run_dir, loss_fn=...)`` owns the data, the optimizer (AdamW, linear warm-up),
gradient clipping, the EMA, logging (tqdm, TensorBoard, log.jsonl), sample grids, checkpoints and
resume. What is learned is a *loss closure* ``loss_fn(model, x, c, ctx) -> scalar``; the CFG
ε-loss is the default (``cfg_loss``), and later models pass their own.

Randomness is a function of (seed, step), never of the process layout: each step's batch indices,
flips and loss noise are drawn for the GLOBAL batch from a generator seeded by (seed, step) on
every rank, and each rank keeps its slice ``ctx.start:ctx.stop``. N processes therefore compute
what one process computes on the same global batch (DDP, or the graph-ready step's own all-reduce,
averages equal-sized per-rank mean gradients into the full-batch gradient), and a resumed run
continues exactly where it stopped.
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

from guidediff import distributed
from guidediff.checkpoint import (
    check_state_dict,
    environment,
    latest_checkpoint,
    TENSOR_FILES,
    load_checkpoint,
    load_optimizer_state,
    read_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from guidediff.config import Config
from guidediff.ema import ema_from_config
from guidediff.errors import UsageError, require
from guidediff.runtime import derive_seed
from guidediff.train_step import StepContext

CHECKPOINTS = "checkpoints"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"


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
    step_mode: str = ""  # train_step.MODES: the step that ran (a failed capture ends "graph-ready")


def cfg_loss(config: Config) -> LossFn:
    """The CFG paper's training objective (Algorithm 1) as a loss closure: ε-loss at λ(u) with
    the label replaced by the null token with probability p_uncond."""
    from guidediff.losses import cfg_objective, draw_noise

    d = config.diffusion
    null_class = config.model.num_classes
    objective = cfg_objective(d, null_class)  # schedule, λ sampling, loss weight, preconditioning

    def loss_fn(model: nn.Module, x: torch.Tensor, c: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        noise = draw_noise(ctx.global_batch, tuple(x.shape[1:]), p_uncond=d.p_uncond if null_class else 0.0,
                           antithetic=d.antithetic, generator=ctx.generator, device=x.device)
        return objective(model, x, c, noise.slice(ctx.start, ctx.stop))

    return loss_fn


def cfg_sample_fn(config: Config, max_classes: int = 10) -> SampleFn:
    """Sample grids from the EMA model during training: a few classes × sample.w, PNG per w."""
    from guidediff.generation import generate, save_grids

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
        return self.gather(self.indices(step), ctx, hflip)

    def gather(self, idx: torch.Tensor, ctx: StepContext, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's images and labels of the global batch ``idx`` (indices into the dataset)."""
        idx = idx[ctx.start:ctx.stop]
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
    def make():
        return Accelerator(mixed_precision=mp, cpu=cpu, kwargs_handlers=[distributed.ddp_kwargs()])

    try:
        return make()
    except ValueError as exc:
        if "already been initialized" in str(exc):
            # an earlier training in this process (a notebook, a test session) fixed accelerate's
            # process-wide precision; that run is over, so its state is dropped, the process group kept
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=False)
            try:
                return make()
            except ValueError as again:
                exc = again
        raise UsageError(f"cannot set up training with mixed_precision={mp!r} ({exc}); set train.mixed_precision=no") from None


def _make_optimizer(config: Config, net: nn.Module, cuda: bool, capturable: bool):
    """AdamW with linear warm-up. ``capturable``: fused AdamW whose step count and learning rate
    live on the device, so a CUDA graph can replay it (the scheduler fills the lr tensor)."""
    tc = config.train
    lr = torch.tensor(tc.lr, device=next(net.parameters()).device) if capturable else tc.lr
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                                  weight_decay=tc.weight_decay, fused=cuda, capturable=capturable)
    for group in optimizer.param_groups:
        group["initial_lr"] = tc.lr  # a number: the scheduler then fills the lr tensor without a host sync
    from guidediff.lr_schedule import lr_lambda

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))  # warm-up, then train.lr_schedule
    return optimizer, scheduler


def _prepare(accelerator, net: nn.Module, optimizer, graphed: bool):
    """Wrap for data parallelism (Accelerate: DDP over processes, its autocast). The graph-ready
    step uses the plain module and optimizer: it does its own autocast (Accelerate's cached-cast
    forward cannot sit inside a CUDA graph) and, with several processes, its own gradient
    all-reduce instead of DDP's; the ranks start from rank 0's weights, as DDP would make them."""
    if graphed:
        if accelerator.num_processes > 1:
            distributed.broadcast_module(net)
        return net, optimizer
    return distributed.prepare(accelerator, net, optimizer)


@dataclass
class RunState:
    """What changes while a run goes: the step, the bookkeeping a checkpoint carries, and the
    current log window."""

    step: int = 0
    prior_time: float = 0.0  # training seconds of earlier invocations (resume)
    commands: list = dataclasses.field(default_factory=list)
    metrics: dict = dataclasses.field(default_factory=dict)  # the last log record
    n_acc: int = 0  # steps in the current log window
    last_t: float = 0.0
    last_step: int = 0
    final_loss: float | None = None
    saved: Path | None = None
    stopped_by: str = "steps"


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

    config        the resolved Config (its [train] table drives the loop; model/data from it by default)
    run_dir       where checkpoints, log.jsonl, config.json, samples and model.safetensors go
    loss_fn       loss closure ``loss_fn(model, x, c, ctx) -> scalar``; default the CFG ε-loss
    net           the module to train; default the UNet of config.model
    dataset       a DatasetArrays; default the one config.data names
    sample_fn     ``sample_fn(ema_model, step, out_dir)`` every train.sample_every; default CFG grids
    resume        continue from run_dir's latest checkpoint when there is one (else start)
    time_limit_s  stop (with a checkpoint) once this many seconds have passed since the call
    progress      show a tqdm bar
    command       the command line, recorded in the checkpoint
    log           where notes go (default print); only the main process speaks
    """
    t0 = time.time()
    run_dir = Path(run_dir)
    tc = config.train
    accelerator = _make_accelerator(config)
    world = accelerator.num_processes
    require(tc.batch_size % world == 0,
            f"train.batch_size={tc.batch_size} is not divisible by the {world} processes; pick a multiple of {world}")

    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        run = _Run(config, run_dir, accelerator, loss_fn=loss_fn, net=net, dataset=dataset, sample_fn=sample_fn,
                   resume=resume, command=command, log=log, t0=t0)
        return run.loop(time_limit_s, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


class _Run:
    """One invocation of the training loop, in phases: restore, step, log, checkpoint, finish."""

    def __init__(self, config: Config, run_dir: Path, accelerator, *, loss_fn, net, dataset, sample_fn, resume,
                 command, log, t0: float):
        self.config, self.run_dir, self.accelerator, self.t0 = config, run_dir, accelerator, t0
        self.main = accelerator.is_main_process
        self.say = (log or print) if self.main else (lambda _msg: None)
        self.device = accelerator.device
        self.cuda = self.device.type == "cuda"
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.ckpt_root = run_dir / CHECKPOINTS
        self.state = RunState()
        self._build(loss_fn, net, dataset, sample_fn)
        self._restore(resume, command)
        self._start_step()

    # -- Build the model, data, optimizer. --------------------------------------------------------
    def _build(self, loss_fn, net, dataset, sample_fn) -> None:
        from guidediff.train_step import choose_mode, graph_safe, graph_setting

        config, tc = self.config, self.config.train
        if dataset is None:
            from guidediff.data.images import load_dataset

            d = config.data
            dataset = load_dataset(d.name, "train", data_dir=d.data_dir, resolution=d.resolution,
                                   channels=d.channels, skip_bad=d.skip_bad_images)
        for note in resolve_model_config(config, dataset):
            self.say(f"note: {note}")
        torch.manual_seed(derive_seed(tc.seed, "init"))
        if net is None:
            from guidediff.nets.unet import UNet

            net = UNet(config.model)
        mp = self.accelerator.mixed_precision
        setting = graph_setting(tc.cuda_graph, posthoc_ema=tc.posthoc_ema, cuda=self.cuda, log=self.say)
        self.mode = choose_mode(setting, cuda=self.cuda, mixed_precision=mp,
                                graph_safe_loss=loss_fn is None or graph_safe(loss_fn), log=self.say)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
        self.loss_fn = loss_fn or cfg_loss(config)
        self.sample_fn = sample_fn or cfg_sample_fn(config)
        self.channels_last = _auto(tc.channels_last, self.cuda)
        self.net = net.to(self.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.cuda:
            torch.set_float32_matmul_precision("high")
        self.param_names = [name for name, _ in self.net.named_parameters()]
        capturable = self.cuda and self.mode != "classic"
        self.optimizer, self.scheduler = _make_optimizer(config, self.net, self.cuda, capturable)
        images = torch.from_numpy(np.array(dataset.images, dtype=np.uint8, copy=True)).to(self.device)
        labels = torch.from_numpy(np.array(dataset.labels, dtype=np.int64, copy=True)).to(self.device)
        self.batches = _Batches(images, labels, tc.batch_size, tc.seed, self.channels_last)

    # -- Restore: checkpoint, EMA, log, config. --------------------------------------------------
    def _restore(self, resume: bool, command: str | None) -> None:
        st, tc, run_dir = self.state, self.config.train, self.run_dir
        latest = latest_checkpoint(self.ckpt_root)
        resume_from = latest if resume else None
        if not resume and latest is not None:
            raise UsageError(f"{run_dir} already holds a run (latest {latest.name}); pass --resume "
                             "to continue it, or choose another output directory")
        ema_state = posthoc_state = None
        if resume_from is not None:
            ck = load_checkpoint(resume_from, device="cpu")
            check_state_dict(ck.model, self.net.state_dict(), str(resume_from / "model.safetensors"))
            require(ck.state["optimizer"].get("param_names") == self.param_names,
                    f"{resume_from} was written for other parameters than this model has; "
                    "resume with the config it was trained with")
            self.net.load_state_dict(ck.model)
            load_optimizer_state(self.optimizer, ck.optimizer_state())
            self.scheduler.load_state_dict(ck.state["scheduler"])
            set_rng_state(ck.state["rng"])
            st.step = ck.step
            st.prior_time = float(ck.state.get("training_time_s", 0.0))
            st.commands = list(ck.state.get("commands", []))
            st.metrics = ck.state.get("metrics", {})
            ema_state = (ck.ema, ck.state["ema"])
            if "posthoc_ema" in ck.state:
                posthoc_state = (read_tensors(ck.path / TENSOR_FILES["posthoc"]), ck.state["posthoc_ema"])
            self.say(f"resuming {run_dir} from {resume_from.name} (step {st.step})")
        elif resume:
            self.say(f"no checkpoint in {self.ckpt_root} yet: starting a new run")
        if command:
            st.commands.append(command)

        self.ema = self.posthoc = None
        if self.main:
            # before prepare: accelerate patches forward for autocast, which a deepcopy would carry over
            self.ema = ema_from_config(self.net, tc)
            if ema_state is not None:
                check_state_dict(ema_state[0], self.ema.state_dict(), str(resume_from / "ema.safetensors"))
                self.ema.load_state_dict(ema_state[0])
                self.ema.load_meta(ema_state[1])
            self._restore_posthoc(posthoc_state, resume_from)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / CONFIG_FILE).write_text(self.config.to_json() + "\n")
            log_records = _read_log(run_dir / LOG_FILE, st.step)
            with open(run_dir / LOG_FILE, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in log_records)

    def _restore_posthoc(self, saved, resume_from: Path | None) -> None:
        """Post-hoc EMA's profiles (train.posthoc_ema): continued from the checkpoint; they must
        run from step 0, since a snapshot's weights are those of a power EMA over all steps."""
        from guidediff.posthoc_snapshots import posthoc_from_config

        self.posthoc = posthoc_from_config(self.net, self.config.train, self.run_dir)
        if self.posthoc is None:
            return
        if saved is None:
            require(self.state.step == 0, f"{resume_from} was trained without train.posthoc_ema, whose profiles must "
                                          "start at step 0; start a new run to keep them")
        else:
            self.posthoc.load(*saved, where=str(resume_from))
        self.posthoc.forget_after(self.state.step)

    # -- The step: data parallelism, compilation, the (maybe graphed) step function. ---------------
    def _start_step(self) -> None:
        from guidediff.train_step import StepParts, TrainStep

        tc = self.config.train
        # the scheduler stays outside prepare: accelerate would step it once per process
        model, opt = _prepare(self.accelerator, self.net, self.optimizer, graphed=self.mode != "classic")
        if _auto(tc.compile, self.cuda):
            model = torch.compile(model)
        parts = StepParts(model=model, net=self.net, optimizer=opt, scheduler=self.scheduler, loss_fn=self.loss_fn,
                          batches=self.batches, ema=self.ema, accelerator=self.accelerator, grad_clip=tc.grad_clip,
                          amp_dtype=self.amp_dtype, hflip=self.config.data.hflip, seed=tc.seed, rank=self.rank,
                          world_size=self.world, global_batch=tc.batch_size,
                          extra_emas=tuple(self.posthoc.emas) if self.posthoc is not None else ())
        self.step_fn = TrainStep(parts, self.mode)
        if self.mode != "classic":
            self.say(f"training step: {'one CUDA graph per step' if self.mode == 'graphed' else 'graph-ready, eager'}")

    # -- Log: mean loss of the window, lr, grad norm, images/s (the only host reads of device values).
    def _log(self, writer, bar) -> None:
        st, tc, accelerator = self.state, self.config.train, self.accelerator
        step_fn = self.step_fn
        mean_loss = float(accelerator.reduce(step_fn.loss_sum / st.n_acc, "mean").item())
        now = time.time()
        ips = (st.step - st.last_step) * tc.batch_size / max(now - st.last_t, 1e-9)
        record = {"step": st.step, "loss": mean_loss, "lr": float(self.scheduler.get_last_lr()[0]),
                  "grad_norm": float(step_fn.grad_norm), "images_per_sec": ips,
                  "elapsed_s": st.prior_time + now - self.t0}
        st.final_loss, st.metrics = mean_loss, record
        st.last_t, st.last_step, st.n_acc = now, st.step, 0
        step_fn.loss_sum.zero_()
        if not math.isfinite(mean_loss):
            raise UsageError(f"the loss became {mean_loss} at step {st.step}; lower train.lr (now {tc.lr}) or "
                             "raise train.warmup_steps, then --resume from the last good checkpoint")
        if self.main:
            with open(self.run_dir / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for key in ("loss", "lr", "grad_norm", "images_per_sec"):
                    writer.add_scalar(f"train/{key}", record[key], st.step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}", refresh=False)

    # -- Checkpoint: weights, EMA, optimizer, scheduler, RNG, bookkeeping. -------------------------
    def _checkpoint(self, elapsed: float) -> Path | None:
        st, tc = self.state, self.config.train
        path = None
        if self.main:
            opt_state = self.optimizer.state_dict()
            for group in opt_state["param_groups"]:  # a device lr is saved as the number it holds
                for key, value in group.items():
                    if torch.is_tensor(value):
                        group[key] = float(value)
            posthoc = self.posthoc
            state = {
                **({"posthoc_ema": posthoc.meta()} if posthoc is not None else {}),
                "config": self.config.to_dict(),
                "optimizer": {"param_names": self.param_names},
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.meta(),
                "rng": rng_state(),
                **environment(),
                "commands": st.commands,
                "training_time_s": st.prior_time + elapsed,
                "metrics": st.metrics,
                "world_size": self.world,
                "images_seen": st.step * tc.batch_size,
            }
            path = save_checkpoint(self.ckpt_root, st.step, model=self.net.state_dict(), ema=self.ema.state_dict(),
                                   optimizer=opt_state, state=state, keep_last=tc.keep_last,
                                   posthoc=posthoc.state_dict() if posthoc is not None else None)
        self.accelerator.wait_for_everyone()
        return path

    def _time_is_up(self, time_limit_s: float | None) -> bool:
        if time_limit_s is None:
            return False
        over = time.time() - self.t0 >= time_limit_s
        if self.world == 1:
            return over
        # every rank must stop at the same step; agree once in a while (a collective)
        if self.state.step % 10 != 0:
            return False
        flag = self.accelerator.reduce(torch.tensor(float(over), device=self.device), "max")
        return bool(flag.item())

    def loop(self, time_limit_s: float | None, progress: bool) -> TrainResult:
        st, tc, main = self.state, self.config.train, self.main
        writer = bar = None
        if main and tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=st.step)
        if main and progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=st.step, unit="step", dynamic_ncols=True, desc="train")
        self.net.train()
        loop_t0, first_step = time.time(), st.step
        st.last_t, st.last_step = loop_t0, st.step
        while st.step < tc.steps:
            # Step.
            self.step_fn(st.step)
            st.step += 1
            st.n_acc += 1
            stop = self._time_is_up(time_limit_s)
            last = st.step == tc.steps or stop
            # Log.
            if st.step % tc.log_every == 0 or last:
                self._log(writer, bar)
            if bar is not None:
                bar.update(1)
            if main and (st.step % tc.sample_every == 0 or st.step == tc.steps):
                self.sample_fn(self.ema.module, st.step, self.run_dir / "samples")
            if main and self.posthoc is not None and self.posthoc.due(st.step, last):
                self.posthoc.snapshot(st.step)
            # Checkpoint.
            if st.step % tc.checkpoint_every == 0 or last:
                st.saved = self._checkpoint(time.time() - self.t0)
            if stop:
                st.stopped_by = "time_limit"
                break
        loop_s = time.time() - loop_t0
        # Finish.
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        return self._finish(loop_s, first_step)

    # -- Finish: export the EMA weights, report the run's own throughput. ---------------------------
    def _finish(self, loop_s: float, first_step: int) -> TrainResult:
        st, tc = self.state, self.config.train
        # the run's rate, not the last log window's: that window may hold one step and a sample hook
        images = (st.step - first_step) * tc.batch_size
        model_file = None
        latest = latest_checkpoint(self.ckpt_root)
        if self.main and latest is not None:
            from guidediff.checkpoint import export_model

            # the EMA weights alone (float16): small enough to copy off a machine when a checkpoint is not
            model_file = export_model(latest, self.run_dir / MODEL_FILE)
        self.accelerator.wait_for_everyone()
        return TrainResult(run_dir=self.run_dir, step=st.step, finished=st.step >= tc.steps,
                           stopped_by=st.stopped_by, final_loss=st.final_loss,
                           images_per_sec=images / max(loop_s, 1e-9) if images else None,
                           checkpoint=st.saved or latest, elapsed_s=time.time() - self.t0,
                           model_file=model_file, images=images, loop_s=loop_s, step_mode=self.step_fn.mode)


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

