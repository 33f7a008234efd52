"""One training step (data, loss, backward, clipping, AdamW, EMA) as a function of the step number,
in three modes that compute the same function:

- ``"classic"``: the Accelerate step (any process count through DDP, fp16 with its gradient scaler).
- ``"graph-ready"``: the step written so that nothing in it waits for the host: the batch indices
  sit in a static buffer, the EMA decay and the learning rate are device tensors, the randomness
  comes from generators positioned per step before the step runs, and the gradient norm stays on
  the device. Runs eagerly; this is what is captured. With several processes it does DDP's work
  itself, without DDP (whose reducer runs from host hooks): the gradients are views into one flat
  buffer, zeroed before the forward and averaged by one all-reduce after the backward, before the
  clipping (``distributed.flat_grad_views``, ``average_gradients``).
- ``"graphed"``: the graph-ready step captured once in a CUDA graph (after two eager warm-up
  steps, which are real training steps) and replayed: one launch per step instead of hundreds.
  With several processes the NCCL all-reduce is captured too (the communicator exists by then:
  the start-up broadcast and the warm-up all-reduces ran eagerly); if any rank fails to capture,
  every rank runs the graph-ready step uncaptured.

Randomness stays a function of (seed, step): on CUDA the step's generator and the dropout
generator are seeded once and moved to offset ``step * PHILOX_STRIDE`` before each step (a graph
replay reads the generator's position when it starts), so a resumed run draws what an
uninterrupted one draws. On the CPU both are reseeded per step, as the classic step does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from guidediff import distributed


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


MODES = ("classic", "graph-ready", "graphed")
# Philox offsets reserved per step: far more than one step consumes (a multiple of 4, as CUDA wants)
PHILOX_STRIDE = 1 << 24
WARMUP_STEPS = 2


@dataclass
class StepParts:
    """What a step touches. ``model`` is what is called (maybe compiled or DDP-wrapped), ``net``
    the plain module whose parameters the optimizer and the EMA hold."""

    model: Any
    net: nn.Module
    optimizer: Any  # torch or Accelerate optimizer
    scheduler: Any
    loss_fn: Any
    batches: Any  # train._Batches
    ema: Any  # EMA or None (other ranks)
    accelerator: Any
    grad_clip: float
    amp_dtype: torch.dtype | None  # autocast dtype of the graph-ready step (None: off)
    hflip: bool
    seed: int
    rank: int
    world_size: int
    global_batch: int
    # more power EMAs updated beside ``ema`` (post-hoc EMA's profiles, ``posthoc_snapshots``)
    extra_emas: tuple = ()

    def emas(self) -> list:
        """Every EMA the step updates (none on the other ranks)."""
        return [] if self.ema is None else [self.ema, *self.extra_emas]


def ema_decay_tensor(n: torch.Tensor, decay: float, warmup: bool) -> torch.Tensor:
    """``ema.ema_decay`` on the device: min(decay, (1 + n)/(10 + n)) for update number n."""
    return torch.clamp_max((1.0 + n) / (10.0 + n), decay) if warmup else torch.full_like(n, decay)


def power_decay_tensor(n: torch.Tensor, gamma: float) -> torch.Tensor:
    """``ema.power_decay`` on the device: (1 − 1/(n + 1))^(γ + 1) for update number n."""
    return (1.0 - 1.0 / (n + 1.0)) ** (gamma + 1.0)


def _update_ema_on_device(ema, n: torch.Tensor, pairs) -> None:
    """``EMA.update`` with the decay computed on the device from the update count ``n`` (which it
    advances): nothing waits for the host, so it can sit in a CUDA graph."""
    shadow, current, shadow_buffers, buffers = pairs
    gamma = getattr(ema, "gamma", None)  # EDM2's power-function EMA (train.ema = "power", post-hoc profiles)
    d = (ema_decay_tensor(n, ema.decay, ema.warmup) if gamma is None else power_decay_tensor(n, gamma)).float()
    # θ_ema ← θ_ema + (1 − d)(θ − θ_ema), the EMA class's lerp with a device weight
    delta = torch._foreach_sub(current, shadow)
    torch._foreach_mul_(delta, 1.0 - d)
    torch._foreach_add_(shadow, delta)
    for mine, theirs in zip(shadow_buffers, buffers):
        mine.copy_(theirs)
    n += 1


def say(message: str) -> None:
    print(message, file=sys.stderr)


# -- pieces of a graph-ready step, shared with the DDGAN step (ddgan.step) -------------------------

def seat_generator(gen: torch.Generator, step: int, *, philox: bool, seed: int, step_seed: int) -> None:
    """Position ``gen`` at training step ``step``. philox (a graph-ready step on CUDA): seeded once
    with ``seed`` and moved to offset ``step * PHILOX_STRIDE``, the position a graph replay reads;
    otherwise reseeded with ``step_seed``, a seed derived from the step."""
    if philox:
        gen.manual_seed(seed)
        gen.set_offset(step * PHILOX_STRIDE)
    else:
        gen.manual_seed(step_seed)


class DeviceEMA:
    """One EMA updated on the device (``_update_ema_on_device``): its update count as a device
    number and its (shadow, current) tensor lists. The caller still counts ``ema.num_updates`` on
    the host (for checkpoints)."""

    def __init__(self, ema, net: nn.Module):
        self.ema = ema
        device = next(net.parameters()).device
        self.n = torch.full((), float(ema.num_updates), dtype=torch.float64, device=device)
        self.pairs = (list(ema.module.parameters()), [q.detach() for q in net.parameters()],
                      list(ema.module.buffers()), list(net.buffers()))

    def update(self) -> None:
        _update_ema_on_device(self.ema, self.n, self.pairs)


def capture_graph(body, generators: tuple[torch.Generator, ...] = ()):
    """(graph, None) with ``body()`` captured in a CUDA graph whose replays read the generators'
    positions, or (None, why) when the capture failed (the caller runs the step uncaptured)."""
    graph = torch.cuda.CUDAGraph()
    if hasattr(graph, "register_generator_state"):
        for gen in generators:
            graph.register_generator_state(gen)
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            body()
    except Exception as exc:  # noqa: BLE001 - any capture failure: the same step, uncaptured
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return graph, None


def on_side_stream(device: torch.device, body) -> None:
    """``body()`` on a fresh stream that waits for the current one, as a warm-up before capture
    wants (lazy optimizer state, cuDNN/cuBLAS plans are made outside the default stream)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream(device).wait_stream(side)


class TrainStep:
    """``step(i)`` runs training step i; ``loss_sum`` (sum of the losses since the last
    ``loss_sum.zero_()``) and ``grad_norm`` (the last step's, before clipping) stay on the device."""

    def __init__(self, parts: StepParts, mode: str):
        from guidediff.runtime import derive_seed

        assert mode in MODES, mode
        p = self.p = parts
        self.mode = mode
        self.device = next(p.net.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.params = [q for q in p.net.parameters() if q.requires_grad]
        self.loss_sum = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.gen = torch.Generator(device=self.device)
        self._seeds = (derive_seed(p.seed, "step"), derive_seed(p.seed, "dropout", p.rank))
        self._graph = None
        self._eager_steps = 0
        # several processes: the gradients live in one flat buffer that one all-reduce averages
        self.flat_grad = (distributed.flat_grad_views(self.params)
                          if mode != "classic" and p.world_size > 1 else None)
        if mode != "classic":
            self.static_idx = torch.zeros(p.global_batch, dtype=torch.long, device=self.device)
            # each EMA updated on the device: its decay needs no host value
            self.device_emas = [DeviceEMA(ema, p.net) for ema in p.emas()]

    # -- randomness ---------------------------------------------------------------------------
    def _context(self, step: int):
        return StepContext(step, self.gen, self.p.rank, self.p.world_size, self.p.global_batch)

    def _seat_generators(self, step: int) -> None:
        from guidediff.runtime import derive_seed

        philox = self.cuda and self.mode != "classic"
        seat_generator(self.gen, step, philox=philox, seed=self._seeds[0],
                       step_seed=derive_seed(self.p.seed, "step", step))
        if philox:
            dropout = torch.cuda.default_generators[self.device.index or 0]
            seat_generator(dropout, step, philox=True, seed=self._seeds[1], step_seed=self._seeds[1])
        else:
            torch.manual_seed(derive_seed(self.p.seed, "dropout", step, self.p.rank))

    # -- the classic Accelerate step ----------------------------------------------------------
    def _classic(self, step: int) -> None:
        p, acc = self.p, self.p.accelerator
        self._seat_generators(step)
        ctx = self._context(step)
        x, c = p.batches.get(step, ctx, p.hflip)
        with acc.autocast():
            loss = p.loss_fn(p.model, x, c, ctx)
        acc.backward(loss)
        if p.grad_clip > 0:
            self.grad_norm = acc.clip_grad_norm_(self.params, p.grad_clip)
        p.optimizer.step()
        p.scheduler.step()
        distributed.zero_grad(p.optimizer, p.world_size)  # under DDP the gradients stay its bucket views
        for ema in p.emas():
            ema.update(p.net)
        self.loss_sum += loss.detach().float()

    # -- the graph-ready step: nothing inside reads a device value on the host -------------------
    def _clear_grads(self) -> None:
        """After an uncaptured step: one process drops its gradients (a capture then allocates
        static ones); several keep their views into the flat buffer, which ``_body`` zeroes."""
        if self.flat_grad is None:
            self.p.optimizer.zero_grad(set_to_none=True)

    def _body(self, step: int) -> None:
        p = self.p
        if self.flat_grad is not None:
            self.flat_grad.zero_()
        ctx = self._context(step)  # a captured step keeps this step number: the default loss never reads it
        x, c = p.batches.gather(self.static_idx, ctx, p.hflip)
        # no autocast weight cache: a cached cast would outlive the capture
        with torch.autocast(self.device.type, dtype=p.amp_dtype or torch.bfloat16, enabled=p.amp_dtype is not None,
                            cache_enabled=False):
            loss = p.loss_fn(p.model, x, c, ctx)
        p.accelerator.backward(loss)
        if self.flat_grad is not None:
            distributed.average_gradients(self.flat_grad, p.world_size)  # before clipping: the global norm
        if p.grad_clip > 0:
            self.grad_norm.copy_(torch.nn.utils.clip_grad_norm_(self.params, p.grad_clip, foreach=self.cuda or None))
        p.optimizer.step()
        for device_ema in self.device_emas:
            device_ema.update()
        self.loss_sum += loss.detach().float()

    def _capture(self, step: int) -> None:
        self._clear_grads()  # one process: the backward inside the capture allocates static grads
        graph, failure = capture_graph(lambda: self._body(step), (self.gen,))
        if self.p.world_size > 1 and failure is None and not self._all_captured(True):
            failure = "another process could not capture its step"
        elif self.p.world_size > 1 and failure is not None:
            self._all_captured(False)
        if failure is not None:
            say(f"note: the training step could not be captured in a CUDA graph ({failure}); "
                "training without it (train.cuda_graph=eager)")
            self._clear_grads()
            self.mode = "graph-ready"
            return
        self._graph = graph

    def _all_captured(self, mine: bool) -> bool:
        """Whether every rank captured its step (an eager all-reduce, outside the capture): the
        ranks must all replay their captured all-reduce or all run it eagerly, never a mix of a
        half-built communicator plan on one side and a live call on the other."""
        import torch.distributed as dist

        flag = torch.tensor(1.0 if mine else 0.0, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def __call__(self, step: int) -> None:
        p = self.p
        if self.mode == "classic":
            self._classic(step)
            return
        self.static_idx.copy_(p.batches.indices(step))
        self._seat_generators(step)
        if self.mode == "graphed" and self._graph is None and self._eager_steps >= WARMUP_STEPS:
            self._capture(step)
        if self._graph is not None:
            self._graph.replay()
        elif self.mode == "graphed":
            def warm_up() -> None:
                self._body(step)  # several processes: its all-reduce is an eager NCCL call before capture
                self._clear_grads()

            on_side_stream(self.device, warm_up)
            self._eager_steps += 1
        else:
            self._body(step)
            self._clear_grads()
        p.scheduler.step()
        for ema in p.emas():
            ema.num_updates += 1


def graph_safe(loss_fn) -> bool:
    """Whether a custom loss closure declared itself safe in a captured step, by the attribute
    ``loss_fn.graph_safe = True``. The declaration promises what a CUDA graph replay needs: no
    host read of a device value (``.item()``, ``float(t)``, ``if t``, numpy), randomness only from
    ``ctx.generator`` and the global generator (dropout), no use of ``ctx.step`` (a replay keeps
    the captured one), the same shapes and no host-side state changed from step to step. Its
    owner backs it with a test that the graph-ready step equals the classic one for it and, on
    CUDA, that the graphed step equals its eager run."""
    return getattr(loss_fn, "graph_safe", False) is True


def graph_setting(cuda_graph: bool | str, *, posthoc_ema: bool, cuda: bool, log=say) -> bool | str:
    """train.cuda_graph as ``choose_mode`` should see it: "auto" with post-hoc EMA on a GPU is the
    classic step, because the post-hoc profiles updated inside the captured step have not passed
    their CUDA test (tests/test_posthoc_ema.py); true still asks for the graph."""
    if cuda_graph == "auto" and posthoc_ema and cuda:
        log("note: train.posthoc_ema with train.cuda_graph=auto trains the classic step: the graphed post-hoc "
            "EMA update is not verified on a GPU yet (train.cuda_graph=true to use it anyway)")
        return False
    return cuda_graph


def choose_mode(setting: bool | str, *, cuda: bool, mixed_precision: str, graph_safe_loss: bool, log=say) -> str:
    """train.cuda_graph → a mode. "auto" graphs CUDA processes whose loss is graph-safe
    (``graph_safe_loss``: the default loss, or a closure declared graph-safe; any other closure might
    read values on the host), one process or several (then the gradient all-reduce is in the graph,
    not DDP); true asks for it; "eager" is the graph-ready step uncaptured; false the classic step
    (Accelerate, DDP for several processes). What cannot be graphed falls back with a note."""
    if setting is False:
        return "classic"
    if setting == "auto" and not (cuda and graph_safe_loss):
        return "classic"
    if mixed_precision == "fp16":
        if setting is True or setting == "eager":
            log(f"note: train.cuda_graph={setting} is not possible with fp16 (it needs a gradient scaler); "
                "training without it")
        return "classic"
    if setting == "eager":
        return "graph-ready"
    if not cuda:
        log("note: train.cuda_graph=true needs a GPU; on the CPU the same step runs without a graph")
        return "graph-ready"
    return "graphed"
