"""`guidediff distill TEACHER --out DIR`: guidance distillation, stage one (Meng et al. 2023)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill", help="distill a CFG model into a w-conditioned student that samples guided at one forward per step",
        description="Stage one of guidance distillation (Meng et al. 2023): a student started from the teacher's "
                    "weights, plus an embedding of w, learns the teacher's guided prediction "
                    "(1+w)*eps(z,c) - w*eps(z,null) for w in [0, --w-max] on the teacher's training data, inside the "
                    "teacher's preconditioning (EDM) if it has one. Writes "
                    "DIR/model.safetensors; sample it like any model (guidediff sample DIR/model.safetensors --w 1).")
    p.add_argument("teacher", help="the CFG model: checkpoint or run directory, exported model, or shipped name")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace what an existing --out holds (it is refused otherwise)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--steps", type=int, default=20000, help="at most this many steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (default 5e-5: a fine-tune)")
    p.add_argument("--w-max", type=float, default=4.0, help="train for w in [0, W_MAX] (default 4)")
    p.add_argument("--data-dir", default=None, help="where the teacher's dataset lives, if not the config's")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    import torch

    from guidediff.checkpoint import save_model
    from guidediff.loading import load_model
    from guidediff.data.images import load_dataset
    from guidediff.distill import check_teacher, distill_model
    from guidediff.errors import require
    from guidediff.nets.w_conditioned import WConditionedUNet
    from guidediff.vdm.model import VDMSamplingNet
    from guidediff.commands._outputs import check_device, claim_out_dir

    require(args.steps >= 1 and args.batch_size >= 1, "--steps and --batch-size must be >= 1")
    require(args.minutes is None or 0 < args.minutes < float("inf"), "--minutes must be a positive number")
    require(0 < args.w_max < float("inf"), f"--w-max must be a positive number, got {args.w_max}")
    require(0 < args.lr < float("inf"), f"--lr must be a positive number such as 5e-5, got {args.lr}")
    from guidediff.external.diffusers_unet import is_diffusers_unet

    # the student is our UNet started from the teacher's weights: a diffusers UNet has neither
    require(not is_diffusers_unet(args.teacher),
            f"{args.teacher} is a diffusers UNet2DModel; distill trains a student from a guidediff model's weights, "
            "so pass a model of guidediff train (diffusers models can be sampled, swept and guided, not distilled)")
    device = check_device(args.device)
    claim_out_dir(args.out, overwrite=args.overwrite)
    teacher_net, config = load_model(args.teacher, device)
    require(not isinstance(teacher_net, WConditionedUNet),
            f"{args.teacher} is already a distilled student; pass the CFG model it came from")
    # a VDM's denoiser adds Fourier features and a learned schedule around its UNet: the student has neither
    require(not isinstance(teacher_net, VDMSamplingNet),
            f"{args.teacher} is a VDM, whose learned schedule and Fourier features the student cannot copy; "
            "distill a CFG model (guidediff train without a [vdm] table)")
    check_teacher(config)
    d = config.data
    data = load_dataset(d.name, "train", data_dir=args.data_dir or d.data_dir, resolution=d.resolution,
                        channels=d.channels, skip_bad=d.skip_bad_images)
    start = time.perf_counter()
    student, losses = distill_model(teacher_net, config, torch.from_numpy(data.images.copy()), torch.from_numpy(data.labels.copy()),
                                    steps=args.steps, seconds=None if args.minutes is None else 60 * args.minutes,
                                    batch=args.batch_size, lr=args.lr, w_range=(0.0, args.w_max), seed=args.seed)
    seconds = time.perf_counter() - start
    k = max(1, min(100, len(losses) // 2))
    out = save_model(student.state_dict(), config, Path(args.out) / "model.safetensors",
                     distilled_from=str(args.teacher), distill={"steps": len(losses), "seconds": round(seconds, 1),
                                                               "batch": args.batch_size, "lr": args.lr,
                                                               "w_range": [0.0, args.w_max],
                                                               "loss_first": sum(losses[:k]) / k,
                                                               "loss_last": sum(losses[-k:]) / k})
    print(f"distilled {len(losses)} steps in {seconds:.0f} s on {device}; loss {sum(losses[:k]) / k:.4f} -> "
          f"{sum(losses[-k:]) / k:.4f} (mean of the first and last {k} steps)")
    print(f"wrote {out}; sample it with: guidediff sample {out} --w 0,1,3")
    return 0
