"""The DDGAN training step as a function of the step number, in the three modes of
guidediff.train_step (train.cuda_graph picks one, ``choose_step_mode``):

- ``"classic"``: ``update.train_step`` with a fresh generator seeded by (seed, step), the host EMA
  update and, with finite_check "step", a host read of each loss (today's step, unchanged).
- ``"graph-ready"``: the same ``train_step`` run so that nothing in it reads a device value on the
  host: the batch indices and every draw come from one generator positioned before the step,
  Adam is fused and capturable with its learning rate on the device (CUDA), the EMA decay is
  computed on the device (``train_step.DeviceEMA``), the losses add up into a device buffer and
  the first non-finite step is a device flag (finite_check "log").
- ``"graphed"``: the graph-ready step captured in CUDA graphs and replayed. Lazy R1 makes two
  step variants (with and without the R1/R2 penalty, whose ∇_x D with create_graph is ordinary
  kernels); each is captured after two eager warm-up runs of its own (real training steps, on a
  side stream) and the host picks the graph from the step number. A capture that fails leaves that
  variant uncaptured, with a one-line note.

Randomness: on the CPU the graph-ready step reseeds its generator with the classic step's seed,
so it draws exactly what the classic step draws. On CUDA it is seeded once and moved to offset
``step * PHILOX_STRIDE`` (a replay reads the generator's position), so the draws differ from the
classic step's but are still a function of (seed, step): a resumed run continues exactly.
"""

from __future__ import annotations

import torch

from guidediff.ddgan.config import DDGANConfig
from guidediff.ddgan.update import train_step
from guidediff.runtime import derive_seed
from guidediff.train_step import (WARMUP_STEPS, DeviceEMA, capture_graph, choose_mode, on_side_stream,
                                  say, seat_generator)

STATS = ("loss_d", "loss_g", "r1", "r2", "d_real", "d_fake")


def choose_step_mode(config: DDGANConfig, cuda: bool, log=say) -> str:
    """train.cuda_graph → "classic" | "graph-ready" | "graphed". "auto" graphs on CUDA unless
    train.finite_check = "step" asks for a host read of every loss (which a graph cannot do)."""
    t = config.train
    setting = False if t.cuda_graph == "auto" and t.finite_check == "step" else t.cuda_graph
    return choose_mode(setting, cuda=cuda, mixed_precision=t.mixed_precision, graph_safe_loss=True,
                       log=log)


def is_r1_step(config: DDGANConfig, step: int) -> bool:
    """Whether step carries the R1/R2 penalty (lazy regularisation: every r1_every-th step)."""
    t = config.train
    return (t.r1_gamma > 0 or t.r2_gamma > 0) and step % t.r1_every == 0


class DDGANStep:
    """``step(i)`` runs DDGAN training step i on ``nets`` (an update.Nets) and the EMA of G.
    ``first_bad`` (the first step whose loss was not finite, −1 if none) stays on the device;
    ``take_window()`` reads the mean statistics since its last call (a host sync)."""

    def __init__(self, nets, ema, data, lams: torch.Tensor, config: DDGANConfig, *, mode: str, bf16: bool,
                 sync_each_step: bool = False):
        assert mode in ("classic", "graph-ready", "graphed"), mode
        self.nets, self.ema, self.data, self.lams, self.config = nets, ema, data, lams, config
        self.mode, self.bf16 = mode, bf16
        self.device = lams.device
        self.cuda = self.device.type == "cuda"
        # a graph-ready step never reads a loss on the host: its finite check is the device flag
        self.sync_each_step = sync_each_step and mode == "classic"
        self.hflip = config.data.hflip and not config.is_toy
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.window_steps = 0
        self.sums = torch.zeros(len(STATS), device=self.device)  # the window's statistics, added up on the device
        if mode != "classic":
            self.gen = torch.Generator(device=self.device)
            self._seed = derive_seed(config.train.seed, "ddgan-step")
            self.device_ema = DeviceEMA(ema, nets.G)
            self.step_now = torch.zeros((), dtype=torch.long, device=self.device)
            self._graphs: dict[bool, torch.cuda.CUDAGraph | None] = {}
            self._eager_runs = {False: 0, True: 0}

    # -- the classic step ------------------------------------------------------------------------
    def _classic(self, step: int) -> None:
        t = self.config.train
        g = torch.Generator(device=self.device).manual_seed(derive_seed(t.seed, "ddgan-step", step))
        x0, c = self.data.batch(t.batch_size, g, hflip=self.hflip)
        stats = train_step(self.nets, x0, c if self.config.data.conditional else None, self.lams, self.config, g,
                           r1_step=is_r1_step(self.config, step), bf16=self.bf16, sync=self.sync_each_step)
        finite = stats.pop("finite")
        if not self.sync_each_step:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite, torch.full_like(self.first_bad, step),
                                         self.first_bad)
        self.ema.update(self.nets.G)
        self._add_up(stats)

    # -- the graph-ready step: nothing inside reads a device value on the host -------------------
    def _body(self, r1_step: bool) -> None:
        t = self.config.train
        x0, c = self.data.batch(t.batch_size, self.gen, hflip=self.hflip)
        stats = train_step(self.nets, x0, c if self.config.data.conditional else None, self.lams, self.config,
                           self.gen, r1_step=r1_step, bf16=self.bf16, sync=False, autocast_cache=False)
        finite = stats.pop("finite")
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~finite, self.step_now, self.first_bad))
        self.device_ema.update()
        self._add_up(stats)

    def _add_up(self, stats: dict[str, torch.Tensor]) -> None:
        self.sums += torch.stack([stats[k].float() for k in STATS])

    def _clear_grads(self) -> None:
        # before a capture: the backward inside it then allocates the gradients in the graph's pool
        self.nets.opt_g.zero_grad(set_to_none=True)
        self.nets.opt_d.zero_grad(set_to_none=True)

    def _capture(self, r1_step: bool) -> torch.cuda.CUDAGraph | None:
        self._clear_grads()
        graph, failure = capture_graph(lambda: self._body(r1_step), (self.gen,))
        if failure is not None:
            kind = "with R1" if r1_step else "without R1"
            say(f"note: the DDGAN step {kind} could not be captured in a CUDA graph ({failure}); "
                "training that step without it (train.cuda_graph=eager)")
            self._clear_grads()
        return graph

    def _graph_ready(self, step: int) -> None:
        t = self.config.train
        r1_step = is_r1_step(self.config, step)
        seat_generator(self.gen, step, philox=self.cuda, seed=self._seed,
                       step_seed=derive_seed(t.seed, "ddgan-step", step))
        self.step_now.fill_(step)
        if self.mode == "graphed" and r1_step not in self._graphs and self._eager_runs[r1_step] >= WARMUP_STEPS:
            self._graphs[r1_step] = self._capture(r1_step)
        graph = self._graphs.get(r1_step)
        if graph is not None:
            graph.replay()
        elif self.mode == "graphed" and r1_step not in self._graphs:
            on_side_stream(self.device, lambda: self._body(r1_step))
        else:
            self._body(r1_step)
        self._eager_runs[r1_step] += 1
        self.ema.num_updates += 1

    def __call__(self, step: int) -> None:
        if self.mode == "classic":
            self._classic(step)
        else:
            self._graph_ready(step)
        self.window_steps += 1

    @property
    def captured(self) -> dict[str, bool]:
        """Which step variants run as a replayed graph."""
        names = {False: "plain", True: "r1"}
        return {names[k]: v is not None for k, v in getattr(self, "_graphs", {}).items()}

    def take_window(self) -> dict[str, float]:
        """Mean statistics of the steps since the last call (one host read), and a fresh window."""
        n = max(self.window_steps, 1)
        out = {k: v / n for k, v in zip(STATS, self.sums.tolist())}
        self.sums.zero_()
        self.window_steps = 0
        return out
