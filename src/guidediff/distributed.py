"""Data parallelism for the training loop: how the model is wrapped for DDP (through Accelerate)
and how a process leaves its process group.

Why the gradients are DDP's bucket views. DDP all-reduces gradients in flat buckets; each
parameter gets a view into its bucket with the parameter's own strides. With channels_last
weights a kernel may hand back the gradient of a weight that has a size-1 dimension (the 1×1
convolutions of skips and attention, a 1-channel input convolution) in another layout that is just
as valid for autograd (strides of size-1 dimensions do not count), but not equal to the view's.
DDP then warns "Grad strides do not match bucket view strides" and copies through the mismatched
layout every step. Here every parameter gets a zero gradient in its own layout BEFORE DDP is
built; with ``gradient_as_bucket_view`` DDP turns those gradients into the bucket views, and
because they are zeroed in place instead of reset to None, every backward accumulates straight
into the bucket: nothing is copied and no layout is left to mismatch.
"""

from __future__ import annotations

import atexit
import weakref
import torch
from torch import nn

# One bucket holds the Fashion-MNIST model's gradients (32 MB float32) and four the 64×64 model's
# (177 MB). The all-reduce of 32 MB over NVLink takes well under a millisecond, so little is lost by
# not overlapping it in smaller pieces, while every bucket boundary splits torch.compile's graph.
BUCKET_CAP_MB = 50.0

_exit_hook_registered = False
_accelerators: list = []  # weak references to the accelerators whose models shutdown() releases


def ddp_kwargs(bucket_cap_mb: float = BUCKET_CAP_MB):
    """Accelerate's handler of DDP options: gradients as bucket views, large buckets.

    static_graph stays off: it buys nothing when every parameter gets a gradient every step, and
    dynamo's DDP graph splitting has had bugs with it."""
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(gradient_as_bucket_view=True, bucket_cap_mb=bucket_cap_mb)


def shutdown() -> None:
    """Leave the process group (NCCL warns at exit about one that was never destroyed).

    The DDP modules that Accelerate still holds are released first, while the group exists: a
    reducer torn down after it can abort the process ("terminate called without an active
    exception", seen in 1 of 12 runs of the gloo test). No barrier: a rank that exits after an error
    would wait in it for the others until the group's timeout."""
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for ref in _accelerators:
        accelerator = ref()
        if accelerator is not None:
            accelerator.free_memory()
    gc.collect()
    dist.destroy_process_group()


def prepare(accelerator, net: nn.Module, optimizer: torch.optim.Optimizer):
    """``accelerator.prepare(net, optimizer)``, ready for DDP's gradient buckets.

    With one process this is plain ``accelerator.prepare``. With several (the accelerator built
    with ``kwargs_handlers=[ddp_kwargs()]``), net — already on its device, in its final memory
    format — first gets zero gradients, which DDP makes its bucket views (see the module
    docstring; clear them with ``zero_grad``), and the process group is destroyed when the
    interpreter exits."""
    global _exit_hook_registered

    if accelerator.num_processes > 1:
        for p in net.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)  # zeros_like keeps p's strides: the bucket view's layout
        _accelerators.append(weakref.ref(accelerator))
        if not _exit_hook_registered:
            atexit.register(shutdown)
            _exit_hook_registered = True
    return accelerator.prepare(net, optimizer)


def zero_grad(optimizer, world_size: int) -> None:
    """Clear the gradients after a step: set to None with one process (saves memory), zeroed in
    place under DDP, where they are its bucket views and must stay so."""
    optimizer.zero_grad(set_to_none=world_size == 1)
