"""CUDA graphs for sampling: a whole deterministic trajectory of one batch (every step's guided
forwards, the guidance combination and the sampler update) captured once per batch shape and then
replayed with one launch.

What a capture needs from the code it records: no host reads of device values (the value checks
of samplers and guidance run on the eager warm-up call and are skipped while capturing, see
``capturing``), no new host-to-device copies (w arrives as a device tensor), and no random draws
from a generator seeded per batch (so: the deterministic DDIM sampler, η = 0).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import torch


def capturing() -> bool:
    """True while a CUDA graph is being captured on the current stream: value checks that read
    device tensors on the host must wait for an eager call."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def why_not_graphable(device: torch.device, *, sampler: str, eta: float, classifier_guidance: bool,
                      distilled: bool) -> str | None:
    """None when a sampling trajectory can be captured, else the reason (for a one-line note)."""
    if device.type != "cuda":
        return "CUDA graphs need a GPU"
    if sampler != "ddim" or eta != 0.0:
        return "only the deterministic DDIM sampler (eta = 0) is captured"
    if classifier_guidance:
        return "classifier guidance differentiates inside the loop"
    if distilled:
        return "a distilled student takes w outside the captured inputs"
    return None


class TrajectoryGraphs:
    """``run(key, fn, *inputs)`` = ``fn(*inputs)``; the first call for a key runs ``fn`` once eagerly
    (checks, lazy initialisation, cuDNN plans), captures it into a graph over static copies of the
    inputs, then every call copies its inputs in and replays. ``counters`` (CountingDenoiser-like,
    with ``calls`` and ``evaluations``) are advanced on each replay by what the captured call cost.
    Inputs of one key must keep their shapes and dtypes; everything else ``fn`` reads (the
    network's weights, the λ grid) must stay alive and in place."""

    def __init__(self, counters: Sequence = ()):
        self.counters = [c for c in counters if c is not None]
        self._graphs: dict = {}

    def _capture(self, fn: Callable, inputs: Sequence[torch.Tensor]):
        static_in = [x.clone() for x in inputs]
        before = [(c.calls, c.evaluations) for c in self.counters]
        side = torch.cuda.Stream(inputs[0].device)
        side.wait_stream(torch.cuda.current_stream(inputs[0].device))
        with torch.cuda.stream(side):
            fn(*static_in)  # the eager warm-up: checks values, initialises what is lazy
        torch.cuda.current_stream(inputs[0].device).wait_stream(side)
        mid = [(c.calls, c.evaluations) for c in self.counters]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = fn(*static_in)
        cost = [(c.calls - m[0], c.evaluations - m[1]) for c, m in zip(self.counters, mid)]
        for c, (calls, evaluations) in zip(self.counters, before):
            c.calls, c.evaluations = calls, evaluations  # what was run is counted by the replay below
        return graph, static_in, static_out, cost

    def run(self, key, fn: Callable, *inputs: torch.Tensor) -> torch.Tensor:
        if key not in self._graphs:
            before = [(c.calls, c.evaluations) for c in self.counters]
            try:
                self._graphs[key] = self._capture(fn, inputs)
            except Exception as exc:  # noqa: BLE001 - e.g. a guidance variant that reads values on the host
                for c, (calls, evaluations) in zip(self.counters, before):
                    c.calls, c.evaluations = calls, evaluations
                note(f"this batch could not be captured ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
                self._graphs[key] = None
        if self._graphs[key] is None:
            return fn(*inputs)
        graph, static_in, static_out, cost = self._graphs[key]
        for static, x in zip(static_in, inputs):
            static.copy_(x)
        graph.replay()
        for c, (calls, evaluations) in zip(self.counters, cost):
            c.calls += calls
            c.evaluations += evaluations
        return static_out.clone()


def note(message: str) -> None:
    print(f"note: {message}; sampling without CUDA graphs", file=sys.stderr)
