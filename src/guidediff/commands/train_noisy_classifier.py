"""`guidediff train-noisy-classifier --config configs/fmnist_noisy_classifier.toml [--out DIR] [--resume]`"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-noisy-classifier", help="train a noisy classifier p(c | z_lambda) for classifier guidance",
        description="Trains the ADM-shaped noisy classifier (UNet encoder + attention pooling) with cross-entropy on "
                    "z_lambda = alpha*x + sigma*eps, u ~ U(0,1), with the [diffusion] schedule of the config (use the "
                    "diffusion model's). Writes the run like `guidediff train` (checkpoints/, log.jsonl, "
                    "model.safetensors) plus accuracy_vs_lam.json/png on the test set. Use the run directory or "
                    "model.safetensors as `guidediff sample --guidance classifier --classifier PATH`.")
    p.add_argument("--config", help="TOML config, e.g. configs/fmnist_noisy_classifier.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML literal); repeatable")
    p.add_argument("--out", help="run directory (default: the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    p.add_argument("--max-steps", type=int, help="train until this step (the same as --set train.steps=N)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop cleanly with a checkpoint after this long")
    p.add_argument("--eval-images", type=int, default=2000, help="test images for accuracy vs lambda (default 2000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import shlex

    from guidediff.errors import UsageError, require

    overrides = list(args.set)
    if args.max_steps is not None:
        require(args.max_steps >= 1, f"--max-steps must be >= 1, got {args.max_steps}")
        overrides.append(f"train.steps={args.max_steps}")
    require(args.time_limit is None or 0 < args.time_limit < float("inf"), f"--time-limit must be positive minutes, got {args.time_limit}")
    require(args.eval_images >= 1, f"--eval-images must be >= 1, got {args.eval_images}")
    from guidediff.commands._run_dir import resolve_run

    config, run_dir = resolve_run(args.config, overrides, args.out, args.resume,
                                  "configs/fmnist_noisy_classifier.toml")

    from guidediff.data.images import load_dataset
    from guidediff.classifier_guidance.training import train_noisy_classifier

    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch / torchrun
    d = config.data
    train_set = load_dataset(d.name, "train", data_dir=d.data_dir, resolution=d.resolution, channels=d.channels,
                             skip_bad=d.skip_bad_images)
    try:
        test_set = load_dataset(d.name, "test", data_dir=d.data_dir, resolution=d.resolution, channels=d.channels,
                                skip_bad=d.skip_bad_images)
    except UsageError as exc:
        # an image folder without a test/ split: monitor on training images (optimistic), and say so
        if main_process:
            print(f"note: no test split ({exc}); accuracy vs lambda is measured on training images")
        test_set = train_set
    command = shlex.join(["guidediff", "train-noisy-classifier", *(["--config", args.config] if args.config else []),
                          *[a for item in args.set for a in ("--set", item)], "--out", str(run_dir)])
    result, accuracy = train_noisy_classifier(
        config, run_dir, train_set, test_set, resume=args.resume, eval_images=args.eval_images,
        time_limit_s=args.time_limit * 60 if args.time_limit else None, progress=not args.no_progress, command=command)
    from guidediff.train import describe

    if not main_process or not accuracy:
        return 0
    print(describe(result))
    held_out = "test set" if test_set is not train_set else "training images"
    print(f"accuracy vs lambda ({held_out}): " + json.dumps(
        {f"{c:.1f}": round(a, 3) for c, a in zip(accuracy["lam_centers"], accuracy["accuracy"])}))
    print(f"wrote {run_dir / 'accuracy_vs_lam.json'} and accuracy_vs_lam.png")
    return 0
