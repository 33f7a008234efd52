"""The output policy every command follows, in one place.

A command writes only into an ``--out`` folder that is empty or missing, that it continues
(``--resume``) or that the user gave up (``--overwrite``: its old contents are removed first).
It claims the folder before any work: the folder is made, a write is tried and a lock file
(``.guidediff.lock``, holding the process id) keeps a second writer out. ``cli.main`` releases
every claim when the command ends; a folder the command made and left empty is removed again,
so a failed run leaves nothing behind. Single-file outputs (``--json``, a report, a classifier's
weights) follow the same policy: an existing file is refused unless ``--overwrite``, and the
file's folder is checked for writability up front. Devices are checked here too, before anything loads.
"""

from __future__ import annotations

import atexit
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from guidediff.errors import UsageError

LOCK_FILE = ".guidediff.lock"


@dataclass
class _Claim:
    folder: Path
    lock: Path
    made: list[Path]  # folders this claim created, the deepest first


_claims: list[_Claim] = []


def _main_process() -> bool:
    # under accelerate launch / torchrun every rank runs the command; rank 0 owns the folder
    return int(os.environ.get("RANK", "0") or 0) == 0


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(lock: Path) -> int | None:
    """The live process (other than this one) that holds ``lock``, else None (a stale lock)."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _pid_alive(pid) else None


def _make_dirs(folder: Path, flag: str) -> list[Path]:
    """mkdir -p, returning the folders it created (deepest first); UsageError if it cannot."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{flag} {folder}: {probe} is a file, not a folder; pass a path under a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {flag} {folder} ({_why(exc)}); pass a writable path") from None
    return missing


def _too_precious(folder: Path) -> bool:
    """Folders --overwrite never empties: a repository, the working directory or one above it, home."""
    here, target = Path.cwd().resolve(), folder.resolve()
    return (target / ".git").exists() or target == Path.home().resolve() or target in (here, *here.parents)


def claim_out_dir(path: str | Path, *, overwrite: bool | None = False, resume: bool | None = None,
                  flag: str = "--out") -> Path:
    """Claim the output folder ``path`` for this command (see the module docstring) and return it.

    ``overwrite``/``resume`` are the values of the command's --overwrite/--resume flags; None means
    the command has no such flag (so the error does not offer it). A folder that already holds
    files is refused unless one of them is set; with ``overwrite`` its contents are removed."""
    folder = Path(path).expanduser()
    if overwrite and resume:
        raise UsageError("--overwrite starts afresh and --resume continues: pass one of them")
    if not _main_process():
        return folder
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder; pass a folder path (it is made if missing)")
    lock = folder / LOCK_FILE
    if folder.is_dir():
        owner = _lock_owner(lock) if lock.exists() else None
        if owner is not None:
            raise UsageError(f"another guidediff process (pid {owner}) is writing to {folder}; wait for it to "
                             f"finish or choose another {flag}")
        try:
            held = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
        except OSError as exc:
            raise UsageError(f"cannot read {flag} {folder} ({_why(exc)}); pass a folder you can write") from None
        if held and not (overwrite or resume):
            names = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            fixes = [f for f, offered in (("--resume to continue it", resume is not None),
                                          ("--overwrite to replace it", overwrite is not None)) if offered]
            fix = f"pass {' or '.join(fixes)}, or choose another {flag}" if fixes else f"choose another {flag}"
            raise UsageError(f"{flag} {folder} already holds {names}; {fix}")
        if held and overwrite:
            if _too_precious(folder):
                raise UsageError(f"--overwrite would empty {folder}, which holds a repository or your working "
                                 f"directory; pass a dedicated {flag} folder")
            for name in held:
                target = folder / name
                try:
                    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
                except OSError as exc:
                    raise UsageError(f"--overwrite cannot remove {target} ({_why(exc)}); remove it by hand or "
                                     f"choose another {flag}") from None
    made = _make_dirs(folder, flag)
    try:
        lock.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        _remove_empty(made)
        raise UsageError(f"cannot write to {flag} {folder} ({_why(exc)}); pass a writable folder") from None
    _claims.append(_Claim(folder, lock, made))
    return folder


def check_out_file(path: str | Path | None, *, flag: str, suffix: str | None = None,
                   overwrite: bool = False, beside: tuple[str, ...] = ()) -> Path | None:
    """Check, before any work, that the file ``path`` can be written (its folder is made if
    missing); None passes through. An existing file is refused unless ``overwrite`` (the
    command's --overwrite flag); it is left alone either way, the command replaces it at the end.
    ``beside``: suffixes of the files written next to it (``checkpoint.save_model`` writes NAME.json
    beside NAME.safetensors), refused the same way."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        example = target / f"result{suffix or ''}"
        raise UsageError(f"{flag} {target} is a folder; pass a file path such as {example}")
    for existing in [target] + [target.with_suffix(s) for s in beside]:
        if (existing.exists() or existing.is_symlink()) and not overwrite:
            what = "" if existing == target else f" (written beside {target.name})"
            raise UsageError(f"{existing} already exists{what}; pass --overwrite to replace it, or choose another {flag}")
    made = _make_dirs(target.parent, flag)
    probe = target.parent / f".{target.name}.probe-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        _remove_empty(made)
        raise UsageError(f"cannot write {flag} {target} ({_why(exc)}); pass a writable path") from None
    return target


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def release_outputs(failed: bool) -> None:
    """Drop every lock this process holds; after a failure also remove the folders it made and left empty."""
    while _claims:
        claim = _claims.pop()
        if _lock_owner(claim.lock) is None:  # ours or stale, never another writer's
            claim.lock.unlink(missing_ok=True)
        if failed:
            _remove_empty(claim.made)


atexit.register(release_outputs, False)


def check_device(device: str | None):
    """The torch.device for a --device value (auto, cpu, cuda, cuda:N, mps), checked before any work."""
    import torch

    text = "auto" if device is None else str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {text} but no GPU is visible; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {text} but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1}); "
                             "pick one of those")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"--device {text} but MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise UsageError(f"--device {text}: guidediff runs on cpu, cuda or mps; use one of those")
    return dev
