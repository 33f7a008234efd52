"""Data parallelism for the training loop: how the model is wrapped for DDP (through Accelerate),
the explicit gradient all-reduce of the graph-ready step, and how a process leaves its process
group.

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

Why the graph-ready step does without DDP. DDP's reducer runs from autograd hooks on the host
(bucket readiness, then the all-reduce) and cannot sit inside a CUDA graph. The graph-ready step
(train_step.py) does what DDP does, in the open: every rank starts from rank 0's weights
(``broadcast_module``), every gradient is a view into ONE flat buffer (``flat_grad_views``), and
after the backward one all-reduce averages the buffer (``average_gradients``). All of it is plain
stream work, so it can be captured with the rest of the step.
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


def _leave_group_at_exit() -> None:
    global _exit_hook_registered

    if not _exit_hook_registered:
        atexit.register(shutdown)
        _exit_hook_registered = True


def prepare(accelerator, net: nn.Module, optimizer: torch.optim.Optimizer):
    """``accelerator.prepare(net, optimizer)``, ready for DDP's gradient buckets.

    With one process this is plain ``accelerator.prepare``. With several (the accelerator built
    with ``kwargs_handlers=[ddp_kwargs()]``), net — already on its device, in its final memory
    format — first gets zero gradients, which DDP makes its bucket views (see the module
    docstring; clear them with ``zero_grad``), and the process group is destroyed when the
    interpreter exits."""
    if accelerator.num_processes > 1:
        for p in net.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)  # zeros_like keeps p's strides: the bucket view's layout
        _accelerators.append(weakref.ref(accelerator))
        _leave_group_at_exit()
    return accelerator.prepare(net, optimizer)


def zero_grad(optimizer, world_size: int) -> None:
    """Clear the gradients after a step: set to None with one process (saves memory), zeroed in
    place under DDP, where they are its bucket views and must stay so."""
    optimizer.zero_grad(set_to_none=world_size == 1)


# -- the graph-ready step's data parallelism (no DDP) ------------------------------------------------

def broadcast_module(net: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``net``, in place, and leave the
    process group at exit.

    DDP does this when it wraps a model; without DDP the ranks must still start identical (a
    resumed run loads one checkpoint everywhere, a new one one seed, but nothing else guarantees
    it), because from here on every rank applies the same averaged gradient to its own copy. The
    broadcast is also the first collective, so NCCL's communicator exists before any capture."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, src)
    _leave_group_at_exit()


def dense_strides(shape, stride) -> bool:
    """True when a tensor of this shape and these strides covers exactly ``numel`` consecutive
    elements, each once (any permutation of a contiguous layout, channels_last included):
    then a slice of a flat buffer viewed with these strides holds it."""
    expected = 1
    for size, step in sorted(((n, s) for n, s in zip(shape, stride) if n != 1), key=lambda d: d[1]):
        if step != expected:
            return False
        expected *= size
    return True


# each gradient starts on a 128-byte boundary (32 float32), as vectorized kernels like their inputs
_ALIGN = 32


def flat_grad_views(params) -> torch.Tensor:
    """One zeroed flat buffer holding every parameter's gradient; each ``p.grad`` becomes a view
    into it with ``p``'s own strides (channels_last kept), so the backward accumulates straight
    into the buffer (autograd adds into an existing gradient in place) and one all-reduce of the
    buffer averages them all. Returns the buffer. Clear it with ``flat.zero_()``, never with
    ``zero_grad(set_to_none=True)``, which would drop the views. A parameter whose strides are not
    a dense layout gets a contiguous gradient (still a view, still correct)."""
    params = list(params)
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"one gradient buffer needs one parameter dtype, got {sorted(map(str, dtypes))}")
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += -(-p.numel() // _ALIGN) * _ALIGN
    flat = torch.zeros(total, dtype=params[0].dtype, device=params[0].device)
    for p, offset in zip(params, offsets):
        piece = flat[offset:offset + p.numel()]
        p.grad = piece.as_strided(p.shape, p.stride()) if dense_strides(p.shape, p.stride()) else piece.view(p.shape)
    return flat


def average_gradients(flat: torch.Tensor, world_size: int) -> None:
    """θ's gradient averaged over the ranks, in place: each rank's mean over its equal slice of the
    global batch, summed and divided by the rank count, is the mean over the global batch (what
    DDP computes; divided first, as DDP's default hook does). A synchronous ``all_reduce``: NCCL
    enqueues it on the current stream (recent torch; older versions fork to their own stream and join
    back), so inside a CUDA-graph capture it is recorded in order with the rest of the step; an
    ``async_op=True`` call left un-waited would leave the capture unjoined."""
    import torch.distributed as dist

    flat.div_(world_size)
    dist.all_reduce(flat)  # SUM: gloo has no AVG
