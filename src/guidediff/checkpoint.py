"""Checkpoints and exported models: safetensors for tensors, JSON for everything else, never pickle.

A training checkpoint is a directory ``<run>/checkpoints/ckpt-{step:07d}/`` holding

    model.safetensors      the raw weights (un-compiled module keys)
    ema.safetensors        the EMA weights (what sampling uses)
    optimizer.safetensors  AdamW state tensors, named ``state.{param index}.{name}``
    state.json             step, optimizer param groups and parameter names, LR-scheduler state,
                           EMA counters, RNG states, the full resolved config, torch version,
                           git commit, commands, training time and the last logged metrics

It is written into a hidden temporary directory beside it, fsynced, and renamed into place, so a
crash never leaves a half-written ``ckpt-*``; ``checkpoints/latest`` (a one-line file naming the
newest checkpoint) is replaced atomically after it. Only the newest ``keep_last`` are kept.

An exported *model* is one ``.safetensors`` file of EMA weights whose metadata holds the config
JSON, the commands that trained it, the commit and the training time (plus a ``.json`` beside it
with the same metadata for people). Shipped models are exported models inside the package.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guidediff.config import Config
from guidediff.errors import UsageError, require

CKPT_PREFIX = "ckpt-"
LATEST = "latest"
STATE_FILE = "state.json"
TENSOR_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "optimizer": "optimizer.safetensors",
                "posthoc": "posthoc_ema.safetensors"}  # posthoc: only with train.posthoc_ema
CHECKPOINT_FORMAT = "guidediff-checkpoint-v1"
MODEL_FORMAT = "guidediff-model-v1"


# -- small utilities ---------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:07d}"


def git_commit() -> str | None:
    """The commit of the source tree ($GUIDEDIFF_COMMIT wins, for copies without .git), with
    '-dirty' when tracked files differ from it; None when unknown."""
    if os.environ.get("GUIDEDIFF_COMMIT"):
        return os.environ["GUIDEDIFF_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=5).returncode == 1
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file, fsync and rename: a reader, or a run cut off mid-write,
    sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # channels_last weights are not contiguous and safetensors stores only row-major data.
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(flat, str(path), metadata=metadata)
    os.chmod(path, 0o644)  # safetensors creates 0600 files; models get shipped and shared
    _fsync_path(path)


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``_save_tensors`` through a temporary file renamed into place: a reader (or a killed writer)
    never leaves a half-written file under ``path``."""
    _remove_stale_tmp(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _save_tensors(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


# -- RNG state ---------------------------------------------------------------------------------

def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG's state as JSON: torch CPU (and CUDA if initialised), numpy, Python, named generators."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state().numpy().tobytes()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
    if generators:
        state["generators"] = {name: _b64(g.get_state().numpy().tobytes()) for name, g in generators.items()}
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what ``rng_state`` recorded (CUDA only when this machine has the same GPUs)."""

    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(_unb64(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensor(s) for s in cuda])
    for gname, g in (generators or {}).items():
        if gname in state.get("generators", {}):
            g.set_state(tensor(state["generators"][gname]))


# -- optimizer state as named tensors + JSON ---------------------------------------------------

def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict → (tensors named 'state.{i}.{key}', JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer moments their parameter's memory layout: safetensors stores them
    contiguous, and fused AdamW refuses channels_last parameters with contiguous moments."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state into THIS run's optimizer: the implementation (fused,
    capturable, a device learning rate) is this run's choice, not the saving run's."""
    keep = [{k: g[k] for k in (*_IMPLEMENTATION_KEYS, "lr") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, mine in zip(optimizer.param_groups, keep):
        saved_lr = group["lr"]
        group.update({k: v for k, v in mine.items() if k != "lr"})
        if torch.is_tensor(mine.get("lr")):
            group["lr"] = mine["lr"]
            group["lr"].fill_(float(saved_lr))
        on_device = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)
    match_state_layout(optimizer)


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# -- validation of files -----------------------------------------------------------------------

def _previous_hint(path: Path) -> str:
    """'; delete it and resume from the previous one: X' (or a fresh-start hint)."""
    ckpt_dir = path if path.is_dir() else path.parent
    others = [p for _, p in list_checkpoints(ckpt_dir.parent) if p.resolve() != ckpt_dir.resolve()]
    older = [p for p in others if p.name < ckpt_dir.name]
    if ckpt_dir.name.startswith(CKPT_PREFIX) and older:
        return f"; delete {ckpt_dir} and resume from the previous one: {older[-1]}"
    if ckpt_dir.name.startswith(CKPT_PREFIX):
        return f"; delete {ckpt_dir} and train again (no older checkpoint is left)"
    return "; restore the file or export it again"


def safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file, after checking the file is whole.

    Raises a one-line UsageError for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} is missing{_previous_hint(path)}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UsageError(f"{path} is truncated ({size} bytes, not even a safetensors header){_previous_hint(path)}")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise UsageError(f"{path} is truncated (safetensors header says {8 + n} bytes of header, file has "
                             f"{size}){_previous_hint(path)}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UsageError(f"{path} is not a safetensors file (unreadable header){_previous_hint(path)}") from None
    require(isinstance(header, dict), f"{path} is not a safetensors file (bad header){_previous_hint(path)}")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise UsageError(f"{path} is truncated (safetensors header says {expected} bytes, file has {size})"
                         f"{_previous_hint(path)}")
    if size > expected:
        raise UsageError(f"{path} is corrupt ({size - expected} bytes after the data the header describes)"
                         f"{_previous_hint(path)}")
    return header


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, validated first (see ``safetensors_header``)."""
    from safetensors.torch import load_file

    safetensors_header(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - the library's own error types vary by version
        raise UsageError(f"{path} cannot be read ({' '.join(str(exc).split())}){_previous_hint(Path(path))}") from None
    check_finite(tensors, path)
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """UsageError if a floating tensor holds NaN or inf: a diverged run samples black images with
    no other sign, so it is stopped where its weights are read."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            path = Path(path)
            hint = _previous_hint(path) if path.parent.name.startswith(CKPT_PREFIX) else \
                "; export an earlier checkpoint of the run, or retrain with a lower learning rate"
            raise UsageError(f"{path} holds non-finite weights (NaN or inf in {key}): the training diverged{hint}")


def check_state_dict(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """UsageError unless `loaded` has exactly the keys and shapes of `expected`."""

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    wrong = [f"{k} {tuple(loaded[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in loaded and tuple(loaded[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {names(wrong)} (file vs model)")
    if problems:
        raise UsageError(f"{source} does not fit the model its config describes: {'; '.join(problems)}; it is "
                         "damaged or was written for another architecture: use the checkpoint or guidediff "
                         "version it came with, or train again")


# -- writing checkpoints -----------------------------------------------------------------------

def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with a state.json) under ckpt_root, oldest first."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        if p.is_dir() and p.name.startswith(CKPT_PREFIX) and (p / STATE_FILE).is_file():
            try:
                found.append((int(p.name[len(CKPT_PREFIX):]), p))
            except ValueError:
                continue
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one if the pointer is missing/stale."""
    ckpt_root = Path(ckpt_root)
    pointer = ckpt_root / LATEST
    if pointer.is_file():
        target = ckpt_root / pointer.read_text().strip()
        if (target / STATE_FILE).is_file():
            return target
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def _jsonable(value: Any) -> Any:
    """``value`` with every tensor replaced by the number (or list) it holds: a graph-ready run keeps
    its learning rate on the device, so the scheduler's state (``_last_lr``) holds tensors."""
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 3,
    posthoc: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ckpt-{step:07d} atomically under ckpt_root, point `latest` at it, prune old ones.

    ``optimizer`` is the optimizer's state_dict; ``state`` the JSON-able rest (step is added);
    ``posthoc`` the post-hoc EMA profiles' weights, when the run keeps them."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(f".tmp-{CKPT_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a process that was killed mid-write
    final = ckpt_root / checkpoint_name(step)
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    state = _jsonable({"format": CHECKPOINT_FORMAT, **state, "step": int(step),
                       "optimizer": {**state.get("optimizer", {}), **opt_meta}})
    try:
        tmp.mkdir()
        _save_tensors(model, tmp / TENSOR_FILES["model"])
        _save_tensors(ema, tmp / TENSOR_FILES["ema"])
        _save_tensors(opt_tensors, tmp / TENSOR_FILES["optimizer"])
        if posthoc is not None:
            _save_tensors(posthoc, tmp / TENSOR_FILES["posthoc"])
        # state.json last: a directory without it is never taken for a checkpoint.
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if final.exists():
            old = ckpt_root / f".tmp-{final.name}-old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_path(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(ckpt_root / LATEST, final.name + "\n")
    if keep_last > 0:
        for _, old_ckpt in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


# -- reading checkpoints -----------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, step, state.json, config and whichever tensors were asked."""

    path: Path
    step: int
    state: dict[str, Any]
    config: Config
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, torch.Tensor]:
        return self.tensors["model"]

    @property
    def ema(self) -> dict[str, torch.Tensor]:
        return self.tensors["ema"]

    def optimizer_state(self) -> dict[str, Any]:
        return unflatten_optimizer(self.tensors["optimizer"], self.state["optimizer"])


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir, a run dir or a checkpoints/ dir."""
    path = Path(path).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        if root.is_dir():
            found = latest_checkpoint(root)
            if found is not None:
                return found
    if path.is_dir() and path.name.startswith(CKPT_PREFIX):
        raise UsageError(f"checkpoint {path} has no {STATE_FILE}: it is incomplete{_previous_hint(path)}")
    if path.is_dir():
        raise UsageError(f"{path} holds no checkpoint (no ckpt-*/ with a {STATE_FILE}); train first or pass "
                         "a checkpoint directory")
    state = "is a file, not a folder" if path.exists() else "does not exist"
    raise UsageError(f"checkpoint {path} {state}; pass a run or checkpoint directory")


def load_checkpoint(path: str | Path, parts: tuple[str, ...] = ("model", "ema", "optimizer"),
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate a checkpoint (a ckpt-* dir or a run dir → its latest): state.json, config
    and the tensor files named in `parts`. Every defect is a one-line UsageError with the fix."""
    path = resolve_checkpoint(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path / STATE_FILE} is unreadable ({exc.__class__.__name__}){_previous_hint(path)}") from None
    require(isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and "config" in state,
            f"{path} is not a guidediff checkpoint (state.json has no format {CHECKPOINT_FORMAT!r})")
    config = Config.from_dict(state["config"], source=str(path / STATE_FILE))
    tensors = {part: read_tensors(path / TENSOR_FILES[part], device) for part in parts}
    return Checkpoint(path=path, step=int(state["step"]), state=state, config=config, tensors=tensors)


# -- exported models ---------------------------------------------------------------------------

EXPORT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def export_model(checkpoint: str | Path, out_file: str | Path, weights: str = "ema", dtype: str = "float16") -> Path:
    """Write the checkpoint's EMA (or raw) weights as one .safetensors model, with its config,
    commands, commit and training time in the metadata, and the same metadata as out_file.json.

    float16 by default: half the size (an 8 M-parameter model is 16 MB) at a relative error of
    5e-4 per weight, far below what bf16 sampling already rounds away; loading casts back to float32."""
    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    ck = load_checkpoint(checkpoint, parts=(weights,))
    return save_model(ck.tensors[weights], ck.config, out_file, dtype, commands=ck.state.get("commands", []),
                      commit=ck.state.get("commit"), training_time_s=ck.state.get("training_time_s"), step=ck.step,
                      weights=weights, torch=ck.state.get("torch"), metrics=ck.state.get("metrics", {}))


def save_model(tensors: dict[str, torch.Tensor], config: Config, out_file: str | Path, dtype: str = "float16", *,
               model_format: str = MODEL_FORMAT, **info: Any) -> Path:
    """Write network weights as an exported model (the format ``loading.load_model`` reads): the config and
    ``info`` (JSON-able values; commit and torch default to this process's) in the safetensors
    metadata and, readable, beside it as out_file.json. Atomic. ``config`` is any config with
    ``to_dict`` (a DDGAN generator passes its own config and ``model_format``)."""
    require(dtype in EXPORT_DTYPES, f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    out_file = Path(out_file)
    require(out_file.suffix == ".safetensors", f"the model file must end in .safetensors, got {out_file}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    info = {"commit": git_commit(), "torch": torch.__version__, **info, "dtype": dtype,
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    # metadata values must be strings: plain strings stay as they are, everything else is JSON
    meta = {"format": model_format, "config": json.dumps(config.to_dict()),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}}
    save_tensors_atomic({k: v.detach().to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v.detach()
                         for k, v in tensors.items()}, out_file, metadata=meta)
    readable = {"format": model_format, "config": config.to_dict(), **info}
    write_text_atomic(out_file.with_suffix(".json"), json.dumps(readable, indent=2) + "\n")
    return out_file


def _remove_stale_tmp(out_file: Path) -> None:
    """Remove the half-written model files that killed writers (dead pids) left beside out_file."""
    for tmp in out_file.parent.glob(f".{out_file.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def read_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata with config/commands parsed) of an exported model file."""
    path = Path(path)
    header = safetensors_header(path)
    meta = header.get("__metadata__") or {}
    require(meta.get("format") == MODEL_FORMAT and "config" in meta,
            f"{path} is a safetensors file but not a guidediff model (no {MODEL_FORMAT!r} metadata); "
            "export one with guidediff.checkpoint.export_model")
    parsed = dict(meta)
    for key in ("config", "commands", "metrics"):
        if key in parsed:
            try:
                parsed[key] = json.loads(parsed[key])
            except json.JSONDecodeError:
                raise UsageError(f"{path} has unreadable {key} metadata; export the model again") from None
    return read_tensors(path, device), parsed


def environment() -> dict[str, Any]:
    """Versions and commit recorded with every checkpoint."""
    import guidediff

    return {"torch": torch.__version__, "guidediff": guidediff.__version__, "python": sys.version.split()[0],
            "commit": git_commit()}
