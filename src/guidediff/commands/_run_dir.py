"""Where a training command runs and with which config (shared by the training commands), and the
run directory a command reads."""

from __future__ import annotations

from pathlib import Path


def resolve_run(config_path: str | None, overrides: list[str], out: str | None, resume: bool, example: str,
                default_out: str | None = None, loader=None):
    """(config, run_dir). A fresh run takes --config with its overrides (read by ``loader``, default
    guidediff.config.load_config); ``--resume`` of a run that has a checkpoint takes the run's own
    config (the truth) with the overrides on top."""
    from guidediff.checkpoint import latest_checkpoint, load_checkpoint
    from guidediff.config import load_config, parse_override, set_value
    from guidediff.errors import UsageError

    config = (loader or load_config)(config_path, overrides) if config_path else None
    out = out or (config.out_dir if config else None) or default_out
    if out is None:
        raise UsageError(f"pass --config FILE (e.g. {example}) to start a run, or --out RUN_DIR --resume to "
                         "continue one")
    from guidediff.commands._outputs import claim_out_dir

    run_dir = claim_out_dir(out, resume=resume)
    latest = latest_checkpoint(run_dir / "checkpoints")
    if resume and latest is not None:
        config = load_checkpoint(latest, parts=()).config
        for item in overrides:
            key, value = parse_override(item)
            set_value(config, key, value, source=f"--set {item}")
        config.validate()
    elif config is None:
        raise UsageError(f"{run_dir} holds no checkpoint to resume; pass --config FILE to start a new run there")
    config.out_dir = str(run_dir)
    return config, run_dir


def existing_dir(path: str, what: str) -> Path:
    """The folder ``path`` given on the command line, or a one-line error that says it is a file or
    missing and what to pass instead (``what``)."""
    from guidediff.errors import require

    folder = Path(path).expanduser()
    require(folder.is_dir(), f"{folder} {'is a file' if folder.exists() else 'does not exist'}; pass {what}")
    return folder
