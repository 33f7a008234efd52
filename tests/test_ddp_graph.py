"""The graph-ready step with several processes (no DDP; one flat gradient buffer, one explicit
all-reduce; what a GPU captures in its CUDA graph): 2 CPU processes (gloo, torchrun) compute what
1 process computes on the same global batch, and what the classic DDP step computes; the gradients
are views into the one buffer; the ranks stay identical; a 2-process run resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from guidediff import distributed
from train_helpers import requires_torchrun, tiny_arrays, tiny_config, torchrun

TESTS = Path(__file__).resolve().parent
# adam_eps = 1: the update ≈ lr·g, linear in the gradient, so all-reduce rounding stays rounding
# in the weights (see test_ddp); a gradient that is not averaged moves them by ~lr·|Δg|.
OVERRIDES = ["train.steps=4", "train.log_every=1", "train.checkpoint_every=2", "train.lr=0.05",
             "train.adam_eps=1.0", "train.grad_clip=0.05", "data.hflip=true", "diffusion.antithetic=true"]

WORKER = r'''
import json, os, sys
from pathlib import Path
import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[2])
from train_helpers import tiny_arrays, tiny_config
from guidediff.nets.unet import UNet
from guidediff.runtime import derive_seed
from guidediff.train import resolve_model_config, train

out, overrides = Path(sys.argv[1]), json.loads(sys.argv[3])


def run(name, *extra, resume=False, net=None):
    config = tiny_config(*overrides, *extra)
    return train(config, out / name, dataset=tiny_arrays(), net=net, sample_fn=lambda *a: None, progress=False,
                 resume=resume, log=lambda _m: None)


config = tiny_config(*overrides)
resolve_model_config(config, tiny_arrays())
torch.manual_seed(derive_seed(config.train.seed, "init"))  # the net train() would build
net = UNet(config.model)
if int(os.environ["RANK"]) == 1:
    with torch.no_grad():  # another start on rank 1: the broadcast from rank 0 must replace it
        for p in net.parameters():
            p.add_(1.0)
result = run("eager", "train.cuda_graph=eager", net=net)
grads = [p.grad for p in net.parameters()]
report = {"mode": result.step_mode,
          "one_buffer": len({g.untyped_storage().data_ptr() for g in grads}) == 1,
          "grad_strides": all(g.stride() == p.stride() for g, p in zip(grads, net.parameters()))}
flat = torch.cat([p.detach().flatten() for p in net.parameters()])
theirs = flat.clone()
dist.broadcast(theirs, 0)
report["ranks_equal"] = torch.equal(flat, theirs)
report["classic_mode"] = run("classic", "train.cuda_graph=false").step_mode
run("resumed", "train.cuda_graph=eager", "train.steps=2")
report["resumed_mode"] = run("resumed", "train.cuda_graph=eager", resume=True).step_mode
# one file per rank: two ranks printing at once can interleave their lines in torchrun's stdout
(out / f"report_rank{os.environ['RANK']}.json").write_text(json.dumps(report))
'''



def _result(run_dir: Path):
    from guidediff.checkpoint import load_checkpoint

    losses = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    ck = load_checkpoint(run_dir / "checkpoints" / "ckpt-0000004", parts=("model", "ema"))
    weights = {f"{p}/{k}": v for p in ("model", "ema") for k, v in ck.tensors[p].items()}
    return [r["loss"] for r in losses], [r["grad_norm"] for r in losses], weights


def _assert_same(a, b, what):
    assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-7), what
    assert a[1] == pytest.approx(b[1], rel=1e-5), what
    worst = max((a[2][k] - b[2][k]).abs().max().item() for k in a[2])
    assert worst < 1e-5, (what, worst)


@pytest.mark.slow
@requires_torchrun
def test_two_process_graph_ready_step_matches_one_process_and_ddp(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*torchrun(2), str(script), str(tmp_path / "two"), str(TESTS), json.dumps(OVERRIDES)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / "two" / f"report_rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report == {"mode": "graph-ready", "one_buffer": True, "grad_strides": True, "ranks_equal": True,
                          "classic_mode": "classic", "resumed_mode": "graph-ready"}, report

    from guidediff.train import train

    config = tiny_config(*OVERRIDES, "train.cuda_graph=eager")
    train(config, tmp_path / "one", dataset=tiny_arrays(), sample_fn=lambda *a: None, progress=False,
          log=lambda _m: None)
    one, two = _result(tmp_path / "one"), _result(tmp_path / "two" / "eager")
    _assert_same(one, two, "2 processes (graph-ready) against 1")
    _assert_same(_result(tmp_path / "two" / "classic"), two, "graph-ready against DDP")
    _assert_same(_result(tmp_path / "two" / "resumed"), two, "resumed against straight")
    assert len(one[0]) == 4 and one[0][0] != one[0][-1]
    start = _result_at(tmp_path / "one", 2)
    assert max((one[2][k] - start[k]).abs().max().item() for k in start) > 1e-3  # the weights moved


def _result_at(run_dir: Path, step: int):
    from guidediff.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir / "checkpoints" / f"ckpt-{step:07d}", parts=("model",))
    return {f"model/{k}": v for k, v in ck.tensors["model"].items()}


class _Net(nn.Module):
    """channels_last 4-D weights (one with size-1 dimensions), a 1-D bias, a 2-D matrix."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))).mean((2, 3)))


def test_gradients_are_views_into_one_buffer_with_the_parameters_strides():
    torch.manual_seed(0)
    net = _Net().to(memory_format=torch.channels_last)
    x = torch.randn(4, 2, 5, 5).to(memory_format=torch.channels_last)
    net(x).square().mean().backward()
    want = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)

    params = list(net.parameters())
    flat = distributed.flat_grad_views(params)
    start, end = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
    for _ in range(2):  # the second backward accumulates into the same views once the buffer is zeroed
        flat.zero_()
        net(x).square().mean().backward()
    for p, g in zip(params, want):
        assert start <= p.grad.data_ptr() < end and p.grad.stride() == p.stride()
        torch.testing.assert_close(p.grad, g)
    assert flat.abs().sum() > 0
    assert sum(p.numel() for p in params) <= flat.numel()


def test_dense_strides():
    assert distributed.dense_strides((8, 3, 1, 1), (3, 1, 3, 3))  # channels_last 1×1 weight
    assert distributed.dense_strides((4, 5), (1, 4))  # a transposed matrix
    assert not distributed.dense_strides((4, 5), (10, 1))  # gaps between rows
    assert not distributed.dense_strides((4, 5), (0, 1))  # an expanded dimension
