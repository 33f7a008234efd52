"""`guidediff train --config FILE [--set section.key=value ...] [--out DIR] [--resume] ...`"""

from __future__ import annotations

import argparse
import sys


class _TrainParser(argparse.ArgumentParser):
    """Also accepts --section.key=value (or --section.key value), the same as --set section.key=value.

    The keys are checked later, with close matches, by guidediff.config; registering every key as
    an option here would import torch just to build `guidediff --help`."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        rest, dotted, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest += args[i:]
                break
            name = arg.split("=", 1)[0]
            if name.startswith("--") and "." in name:
                if "=" in arg:
                    dotted.append(arg[2:])
                elif i + 1 < len(args):
                    dotted.append(f"{arg[2:]}={args[i + 1]}")
                    i += 1
                else:
                    rest.append(arg)
            else:
                rest.append(arg)
            i += 1
        namespace, extras = super().parse_known_args(rest, namespace)
        namespace.set = list(getattr(namespace, "set", None) or []) + dotted
        return namespace, extras


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a class-conditional diffusion model (CFG; a VDM when the config has a [vdm] table)",
        allow_abbrev=False,
        description="Train from a TOML config; every config key can be overridden with --set section.key=value "
                    "(or --section.key=value). A run directory holds config.json, log.jsonl, tb/ (TensorBoard), "
                    "samples/ and checkpoints/; every invocation ends by exporting the latest EMA weights as "
                    "model.safetensors (float16), small enough to copy off a machine.")
    p.add_argument("--config", help="TOML config, e.g. configs/fmnist_cfg.toml (not needed to --resume a run)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML literal: 3, 2e-4, true, [0, 3], \"text\"); repeatable")
    p.add_argument("--out", help="run directory (default: the config's out_dir, else runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output directory from its latest checkpoint (starts it if it has none)")
    p.add_argument("--max-steps", type=int, help="train until this step (the same as --set train.steps=N)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop cleanly with a checkpoint after this much wall time; continue later with --resume")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images of an image folder out (the same as --set data.skip_bad_images=true)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.__class__ = _TrainParser  # subparsers build plain ArgumentParsers; this one adds --section.key
    p.set_defaults(func=run)


def _command_line(args) -> str:
    import shlex

    parts = ["guidediff", "train"]
    if args.config:
        parts += ["--config", args.config]
    for item in args.set:
        parts += ["--set", item]
    for flag, value in (("--out", args.out), ("--max-steps", args.max_steps), ("--time-limit", args.time_limit)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [flag for flag, on in (("--resume", args.resume), ("--skip-bad-images", args.skip_bad_images)) if on]
    return shlex.join(parts)


def run(args) -> int:
    import os
    from functools import partial
    from pathlib import Path

    from guidediff.errors import require

    overrides = list(args.set)
    if args.max_steps is not None:
        require(args.max_steps >= 1, f"--max-steps must be >= 1, got {args.max_steps}")
        overrides.append(f"train.steps={args.max_steps}")
    if args.skip_bad_images:
        overrides.append("data.skip_bad_images=true")
    if args.time_limit is not None:
        require(0 < args.time_limit < float("inf"),
                f"--time-limit must be a positive number of minutes, got {args.time_limit}")

    # the run directory: --out, else the config's out_dir, else runs/<config stem>
    from guidediff.commands._run_dir import resolve_run

    # a config with a [vdm] table (configs/fmnist_vdm.toml) trains a VDM: the config decides the method
    from guidediff.vdm.training import has_vdm_table, load_config_without_vdm, train_vdm, vdm_for_run

    plain = [item for item in overrides if not item.startswith("vdm.")]
    config, run_dir = resolve_run(args.config, plain, args.out, args.resume, "configs/fmnist_cfg.toml",
                                  default_out=f"runs/{Path(args.config).stem}" if args.config else None,
                                  loader=load_config_without_vdm if has_vdm_table(args.config) else None)
    vdm = vdm_for_run(args.config, overrides, run_dir, args.resume)

    from guidediff.train import describe, train

    if vdm is not None:
        train = partial(train_vdm, vdm=vdm)

    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch / torchrun
    if main_process:
        print(f"run dir: {run_dir}", flush=True)
    result = train(config, run_dir, resume=args.resume, progress=not args.no_progress,
                   time_limit_s=args.time_limit * 60 if args.time_limit else None, command=_command_line(args))
    if main_process:
        print(describe(result), flush=True)
    return 0
