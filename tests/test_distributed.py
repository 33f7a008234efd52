"""DDP and channels_last (guidediff.distributed): gradients are DDP's bucket views, so a kernel that
returns a weight gradient in another valid layout cannot trigger "Grad strides do not match bucket
view strides"; the process group is destroyed at exit. Two CPU processes (gloo, torchrun).

CPU kernels return gradients in the parameter's layout, so the GPU case is imitated: the 1×1
convolution's weight passes through an identity whose backward returns a C-contiguous gradient,
which for a [O, I, 1, 1] channels_last weight differs from the weight's strides only in its
size-1 dimensions (as cuDNN may do)."""

from __future__ import annotations

import os
import subprocess

import pytest

from train_helpers import requires_torchrun, torchrun

pytestmark = [pytest.mark.slow, requires_torchrun]

WORKER = r'''
import atexit, sys
import torch
import torch.distributed as dist
from torch import nn
from accelerate import Accelerator
from guidediff import distributed

atexit.register(lambda: print(f"process group left at exit: {not dist.is_initialized()}", flush=True))


class ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):
        return torch.empty_strided(g.shape, torch.empty(g.shape).stride()).copy_(g)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = nn.functional.conv2d(h, ContiguousGrad.apply(self.b.weight), self.b.bias)
        return self.c(torch.relu(h))


def run(accelerator, fixed):
    torch.manual_seed(0)
    net = Net().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    if fixed:
        model, opt = distributed.prepare(accelerator, net, optimizer)
        zero_grad = lambda: distributed.zero_grad(opt, accelerator.num_processes)
    else:
        model, opt = accelerator.prepare(net, optimizer)
        zero_grad = lambda: opt.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(8, 1, 6, 6, generator=g)[accelerator.process_index::2].to(memory_format=torch.channels_last)
        accelerator.backward(model(x).square().mean())
        views = all(p.grad._base is not None for p in net.parameters())
        opt.step()
        zero_grad()
    return views, [p.detach().clone() for p in net.parameters()]


accelerator = Accelerator(cpu=True, kwargs_handlers=[distributed.ddp_kwargs()])
views, w_fixed = run(accelerator, fixed=True)
print(f"gradients are bucket views: {views}", flush=True)
print("---- fixed run done", file=sys.stderr, flush=True)
_, w_plain = run(accelerator, fixed=False)
print(f"same weights: {all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w_fixed, w_plain))}", flush=True)
'''



def test_gradients_are_bucket_views_without_stride_warning(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*torchrun(2), str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    fixed, _, plain = done.stderr.partition("---- fixed run done")
    assert plain, done.stderr[-3000:]
    assert "Grad strides do not match" not in fixed, fixed[-3000:]
    # the control (plain accelerator.prepare; a warning is shown once per process) proves the imitation
    assert "Grad strides do not match bucket view strides" in plain, plain[-3000:]
    assert done.stdout.count("gradients are bucket views: True") == 2, done.stdout
    assert done.stdout.count("same weights: True") == 2, done.stdout
    assert done.stdout.count("process group left at exit: True") == 2, done.stdout
