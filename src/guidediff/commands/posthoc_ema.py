"""`guidediff posthoc-ema RUN_DIR --sigma-rel 0.07 [--out FILE]`: the model of an EMA length chosen
after training, from the snapshots of a run trained with train.posthoc_ema (EDM2's post-hoc EMA)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "posthoc-ema", help="write the model of any EMA length (sigma_rel) from a run's post-hoc EMA snapshots",
        description="Solve for the weights of a power-function EMA of relative length sigma_rel at the run's last "
                    "snapshot as a least-squares combination of the snapshots a run trained with "
                    "--set train.posthoc_ema=true stored in RUN_DIR/posthoc/ (Karras et al. 2024, EDM2), and write "
                    "them as a model file that `guidediff sample`, `sweep` and `eval` load.")
    p.add_argument("run_dir", help="the training run's directory (it holds posthoc/ and checkpoints/)")
    p.add_argument("--sigma-rel", type=float, required=True,
                   help="the EMA length as a fraction of training (EDM2 uses 0.05 to 0.15)")
    p.add_argument("--out", default=None,
                   help="model file to write (default RUN_DIR/model-sigma_rel<value>.safetensors)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="weights' storage type (default float16, like the model.safetensors of a run)")
    p.add_argument("--max-fit-error", type=float, default=None,
                   help="refuse a sigma_rel whose per-step EMA weights the snapshots fit worse than this relative "
                        "L2 error (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file (it is refused otherwise)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from guidediff.checkpoint import load_checkpoint, save_model
    from guidediff.commands._outputs import check_out_file
    from guidediff.commands._run_dir import existing_dir
    from guidediff.errors import require
    from guidediff.posthoc_snapshots import DEFAULT_MAX_FIT_ERROR, check_sigma_rel, list_snapshots, posthoc_ema

    check_sigma_rel(args.sigma_rel)
    run_dir = existing_dir(args.run_dir, "the directory of a run trained with --set train.posthoc_ema=true")
    max_fit = DEFAULT_MAX_FIT_ERROR if args.max_fit_error is None else args.max_fit_error
    require(0 < max_fit < 1, f"--max-fit-error must lie in (0, 1) (a relative error; default 0.05), got {max_fit}")
    out_path = Path(args.out or run_dir / f"model-sigma_rel{args.sigma_rel:g}.safetensors")
    require(out_path.suffix == ".safetensors", f"--out must end in .safetensors, got {out_path}")
    list_snapshots(run_dir)  # before the checkpoint: a run without snapshots is told how to get them
    ck = load_checkpoint(run_dir, parts=())  # the config, commands and commit that go with the weights
    out = check_out_file(out_path, flag="--out", suffix=".safetensors", overwrite=args.overwrite, beside=(".json",))
    tensors, info = posthoc_ema(run_dir, args.sigma_rel, max_fit)
    path = save_model(tensors, ck.config, out, args.dtype, commands=ck.state.get("commands", []),
                      commit=ck.state.get("commit"), training_time_s=ck.state.get("training_time_s"),
                      step=info["step"], weights="posthoc-ema", torch=ck.state.get("torch"),
                      posthoc_ema={k: info[k] for k in ("sigma_rel", "gamma", "fit_error", "snapshots")})
    print(f"sigma_rel {info['sigma_rel']:g} (gamma {info['gamma']:.3f}) at step {info['step']} from "
          f"{info['snapshots']} snapshots; per-step weights fit to {info['fit_error']:.2e} (relative L2)")
    print(f"wrote {path}")
    return 0
