"""`guidediff train-ddgan --data fmnist|stacked-fmnist|grid25|IMAGE_FOLDER --T 4 --out DIR [--minutes M] ...`"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-ddgan", help="train a denoising diffusion GAN (Xiao et al. 2022) with T denoising steps",
        description="Train DDGAN: a generator G(x_t, z, t) that predicts x_0 and a time-dependent discriminator "
                    "D(x_{t-1}, x_t, t), on T steps of the VP schedule (beta 0.1..20). The run directory holds "
                    "config.json, log.jsonl, checkpoints/, model.safetensors (EMA generator) and samples.png. "
                    "Defaults per dataset are in configs/ddgan_*.toml; any key can be set with "
                    "--set section.key=value.")
    p.add_argument("--data", metavar="fmnist|stacked-fmnist|grid25|FOLDER",
                   help="training data (default: the config file's, else fmnist); a folder of your own images, one "
                        "sub-folder per class, with --resolution and --channels")
    p.add_argument("--resolution", type=int, help="an image folder's side in pixels (data.resolution), e.g. 32")
    p.add_argument("--channels", type=int, choices=(1, 3), help="an image folder's channels (data.channels)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable files of an image folder out (data.skip_bad_images), instead of stopping")
    p.add_argument("--T", type=int, help="number of denoising steps (1, 2, 4, 8 in the paper); default per dataset")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="TOML file, e.g. configs/ddgan_fmnist.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. train.lr_d=1e-4; repeatable")
    p.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--steps", type=int, help="total number of training steps")
    p.add_argument("--batch-size", type=int, help="batch size (train.batch_size)")
    p.add_argument("--conditional", action="store_true", help="class-conditional G and D (data.conditional)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto: cuda when available")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (--steps/--minutes/--device may change)")
    p.add_argument("--samples", type=int, default=64, help="samples drawn for samples.png at the end (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _command_line(args) -> str:
    import shlex

    parts = ["guidediff", "train-ddgan"]
    for flag, value in (("--data", args.data), ("--T", args.T), ("--out", args.out), ("--config", args.config),
                        ("--minutes", args.minutes), ("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--resolution", args.resolution), ("--channels", args.channels), ("--device", args.device)):
        if value is not None:
            parts += [flag, str(value)]
    for item in args.set:
        parts += ["--set", item]
    parts += [flag for flag, on in (("--conditional", args.conditional), ("--skip-bad-images", args.skip_bad_images),
                                    ("--resume", args.resume)) if on]
    return shlex.join(parts)


def run(args) -> int:
    from pathlib import Path

    from guidediff.checkpoint import latest_checkpoint
    from guidediff.ddgan.config import is_image_folder, load_config
    from guidediff.ddgan.sample import generate, save_preview
    from guidediff.ddgan.train import CHECKPOINTS, RESUMABLE, train
    from guidediff.errors import require

    from guidediff.commands._outputs import check_device, claim_out_dir

    out = Path(args.out).expanduser()
    require(not args.resume or out.is_dir(), f"--resume: {out} does not exist, so there is no run to continue; "
                                             "check the path, or leave out --resume to start a new run there")
    if args.device is not None:
        check_device(args.device)
    claim_out_dir(out, resume=args.resume)
    overrides = list(args.set)
    for key, value in (("diffusion.T", args.T), ("train.steps", args.steps), ("train.minutes", args.minutes),
                       ("train.batch_size", args.batch_size), ("train.device", args.device and f'"{args.device}"'),
                       ("data.resolution", args.resolution), ("data.channels", args.channels)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.conditional:
        overrides.append("data.conditional=true")
    if args.skip_bad_images:
        overrides.append("data.skip_bad_images=true")
    resuming = args.resume and latest_checkpoint(out / CHECKPOINTS) is not None
    require(args.samples >= 1, f"--samples must be >= 1, got {args.samples}")
    if resuming:
        may_change = tuple(f"{key}=" for key in RESUMABLE)
        fixed = [item for item in overrides if not item.startswith(may_change)]
        require(not fixed and not args.config,
                f"--resume continues {out} with its saved config; only --steps, --minutes, --device, "
                f"--skip-bad-images, --set train.cuda_graph=... and --set train.finite_check=... may change, and "
                f"--data the place of a run's image folder (drop {', '.join(fixed) or '--config'}) or start a new "
                "run with another --out")
        config = saved_config(out, overrides)  # its own step mode unless the command names another
        if args.data is not None:
            require(is_image_folder(config.data.name) and is_image_folder(args.data),
                    f"--resume continues {out} on its own data ({config.data.name}); --data may only give a run on "
                    "an image folder that folder's new place")
            config.data.name = args.data
    else:
        config = load_config(args.data, args.config, overrides)
    result = train(config, out, resume=args.resume, progress=not args.no_progress, command=_command_line(args))

    from guidediff.ddgan.sample import load_generator

    G, saved = load_generator(result.model_file, device=config.train.device)
    n = args.samples if not saved.is_toy else max(args.samples, 5000)
    samples = generate(G, saved, n, seed=saved.train.seed, device=config.train.device)
    preview = save_preview(out / "samples.png", samples, saved)
    line = (f"trained DDGAN T={saved.diffusion.T} on {saved.data.name}: {result.step} steps "
            f"(stopped by {result.stopped_by}), checkpoint {result.checkpoint}, generator {result.model_file}, "
            f"samples {preview}")
    if saved.is_toy:
        from guidediff.data.toy2d import load_toy
        from guidediff.ddgan.modes import grid_coverage

        mix = load_toy(saved.data.name)
        cov = grid_coverage(samples["x"], mix.means.numpy(), float(mix.covs[0, 0, 0].sqrt()))
        line += f"; {cov['modes']}/{len(mix.means)} modes, {cov['high_quality_share']:.1%} high-quality samples"
    print(line)
    return 0


def saved_config(run_dir, overrides: list[str]):
    """The config a run was saved with, with the resuming command's overrides on top."""
    from guidediff.config import parse_override
    from guidediff.ddgan.config import DDGANConfig, set_value
    from guidediff.ddgan.train import read_ddgan_checkpoint

    _, state, _ = read_ddgan_checkpoint(run_dir, parts=())
    config = DDGANConfig.from_dict(state["config"], source=str(run_dir))
    for item in overrides:
        key, value = parse_override(item)
        set_value(config, key, value, source=f"--set {item}")
    config.validate()
    return config
