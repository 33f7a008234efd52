"""`guidediff bpd CKPT --split test`: bits/dim of a data set under a model's variational bound."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bpd", help="bits/dim (VDM variational bound) on a data split, with a 95%% CI and its three terms")
    p.add_argument("model", help="checkpoint or run directory, exported .safetensors model, or shipped model name; "
                                 "a non-VDM model is evaluated under the fixed schedule it trained with")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=None, help="evaluate the first N images of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo noise (times u, ε, ε_0)")
    p.add_argument("--steps", type=int, default=None,
                   help="T for the discrete-time bound L_T; 0 = continuous time (default: what the model trained with)")
    p.add_argument("--condition", default="label", choices=["label", "null"],
                   help="label: log p(x|c) with the true class; null: the unconditional log p(x) (null token)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files (default: searched)")
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--estimator", choices=["importance", "uniform"], default=None,
                   help="continuous time: importance (default) draws λ from a variance-optimal density measured "
                        "by a pilot on training images; uniform draws u uniformly on the model's own schedule. "
                        "Same expectation, different variance. Discrete time (--steps T) is always uniform")
    p.add_argument("--pilot", type=int, default=16, help="importance: training images of the pilot (default 16)")
    p.add_argument("--bins", type=int, default=32, help="importance: λ bins of the pilot (default 32)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON to PATH")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file (it is refused otherwise)")
    p.add_argument("--no-bf16", action="store_true", help="run the network in float32 on the GPU")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from guidediff.data.images import load_dataset, to_tensor_dataset
    from guidediff.errors import require
    from guidediff.vdm.bpd import evaluate_bpd
    from guidediff.vdm.loading import load_vdm

    require(args.n is None or args.n >= 1, f"--n must be >= 1, got {args.n}")
    require(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    require(args.steps is None or args.steps >= 0, f"--steps must be >= 0 (0 = continuous time), got {args.steps}")
    require(args.pilot >= 1 and args.bins >= 1, f"--pilot and --bins must be >= 1, got {args.pilot} and {args.bins}")
    from guidediff.commands._outputs import check_device, check_out_file

    device = check_device(args.device)
    check_out_file(args.json, flag="--json", suffix=".json", overwrite=args.overwrite)

    model, config = load_vdm(args.model, device=device, weights=args.weights)
    d = config.data
    data = load_dataset(d.name, args.split, data_dir=args.data_dir or d.data_dir, resolution=d.resolution,
                        channels=d.channels)
    images, labels = data.images, data.labels
    if args.n is not None:
        require(args.n <= len(images), f"--n {args.n} exceeds the {len(images)} images of the {args.split} split; "
                                       f"lower it")
        images, labels = images[:args.n], labels[:args.n]
    x, c = to_tensor_dataset(images, labels, device=device)
    cfg_u = model.unet.config
    require(tuple(x.shape[1:]) == (cfg_u.in_channels, cfg_u.image_size, cfg_u.image_size),
            f"the {d.name} images are {tuple(x.shape[1:])} but the model takes "
            f"{(cfg_u.in_channels, cfg_u.image_size, cfg_u.image_size)}; evaluate it on the data it trained on")

    T = model.vdm.timesteps if args.steps is None else args.steps
    require(not (T and args.estimator == "importance"),
            f"--estimator importance samples λ for the continuous-time bound, but T = {T}; pass --steps 0 for "
            "continuous time or leave --estimator out")
    estimator = "uniform" if T else (args.estimator or "importance")
    schedule, how = None, (f"uniform over the {T} steps" if T else "uniform u on the model's own schedule")
    if estimator == "importance":
        schedule, how = _importance_schedule(model, d, args, device)
    result = evaluate_bpd(model, x, c, batch_size=args.batch_size, seed=args.seed, T=args.steps,
                          condition=args.condition, bf16=not args.no_bf16, progress=True, schedule=schedule)
    lam_max, lam_min = model.schedule.lam_max, model.schedule.lam_min
    print(f"{args.model} on {d.name} {args.split} ({args.condition}, "
          f"{'continuous time' if T == 0 else f'T = {T}'}, λ ∈ [{lam_min:.3f}, {lam_max:.3f}])")
    print(f"estimator: {estimator} ({how})")
    print(result.table())
    if args.json:
        payload = {"model": str(args.model), "dataset": d.name, "split": args.split, "condition": args.condition,
                   "timesteps": T, "schedule": model.vdm.schedule, "lam_min": lam_min, "lam_max": lam_max,
                   "seed": args.seed, "device": str(device), "estimator": estimator, "estimator_detail": how,
                   **result.to_dict()}
        path = Path(args.json).expanduser()
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def _importance_schedule(model, d, args, device):
    """(the pilot's importance schedule over λ, a line saying how it was made). The pilot reads the
    last --pilot training images, never the evaluated ones of a test split, with its own noise."""
    import torch

    from guidediff.data.images import load_dataset, to_tensor_dataset
    from guidediff.vdm.variance import pilot_importance_schedule

    train = load_dataset(d.name, "train", data_dir=args.data_dir or d.data_dir, resolution=d.resolution,
                         channels=d.channels)
    pilot = min(args.pilot, len(train.images))  # a small data set lends all it has
    xp, cp = to_tensor_dataset(train.images[-pilot:], train.labels[-pilot:], device=device)
    if args.condition == "null" or model.num_classes == 0:
        cp = torch.full_like(cp, model.num_classes)
    schedule = pilot_importance_schedule(model.denoiser, model.schedule, xp.float(), cp, bins=args.bins,
                                         seed=args.seed + 1, batch_size=args.batch_size)
    return schedule, (f"λ drawn from p*(λ) ∝ √E[(½‖ε − ε̂‖²)²] on {args.bins} bins, measured on {pilot} "
                      "training images, 5 % uniform mixed in")
