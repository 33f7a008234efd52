"""`guidediff sweep CKPT --w ... --n ... --steps ...`: the guidance trade-off curve."""

from __future__ import annotations

from guidediff.commands._guidance_args import (
    add_cfg_variant_arguments,
    add_registry_arguments,
    cfg_variant_from_args,
    guidance_weights,
    method_options,
    sampler_options,
)
from guidediff.commands._sampler_args import add_grid_argument, sampler_names


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="sample at several guidance weights and evaluate each (FID/IS/CAS/P/R)")
    p.add_argument("model", help="checkpoint directory, exported model file, shipped model name (fmnist-cfg), or "
                                 "a diffusers UNet2DModel directory (save_pretrained)")
    p.add_argument("--null-class", type=int, default=None,
                   help="diffusers models: the label index of the null (unconditional) class (default: the last)")
    p.add_argument("--w", default=None, help="comma list of CFG weights w (diffusers' scale = 1 + w); "
                                            "default 0,0.1,0.3,0.5,1,2,3,4")
    p.add_argument("--n", type=int, default=10000, help="images per w, split evenly over the classes")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=sampler_names())
    add_grid_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--classifier", default=None, help="evaluation classifier weights (default: the shipped one)")
    p.add_argument("--no-bf16", action="store_true", help="sample in float32 on the GPU")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace what an existing --out holds (it is refused otherwise)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out: keep its finished points (same settings), sample the rest")
    add_registry_arguments(p)
    p.add_argument("--noisy-classifier", default=None,
                   help="classifier guidance: the noisy classifier (output of guidediff train-noisy-classifier); "
                        "--classifier stays the evaluation classifier. With CFG it only measures guide_accuracy")
    p.add_argument("--scale", default=None, help="classifier guidance: comma list of scales s, e.g. 1,2,4,10")
    p.add_argument("--base", choices=["uncond", "cond"], default=None,
                   help="classifier guidance on the unconditional (default) or conditional prediction")
    p.add_argument("--cg-form", choices=["score", "mean"], default=None,
                   help="score form (any sampler) or ancestral mean shift (needs --sampler ancestral)")
    add_cfg_variant_arguments(p)
    p.add_argument("--compile", action="store_true",
                   help="run the networks through torch.compile (on a GPU about 3x faster sampling after a "
                        "minute of compilation)")
    p.set_defaults(func=run)


def run(args) -> int:
    from guidediff.commands._outputs import check_device, claim_out_dir
    from guidediff.errors import UsageError, in_flags, require

    check_device(args.device)
    claim_out_dir(args.out, overwrite=args.overwrite, resume=args.resume)

    from guidediff.guidance import get_guidance

    spec = get_guidance(args.guidance)
    knobs = guidance_weights(args, spec, "0,0.1,0.3,0.5,1,2,3,4")
    require(spec.needs != "classifier" or args.noisy_classifier is not None,
            f"--guidance {spec.name} needs --noisy-classifier PATH")
    require(args.guidance == "cfg" or args.cfg_variant in (None, "plain"), "--cfg-variant applies to --guidance cfg only")
    if args.compile:
        from guidediff.runtime import resolve_device

        # inductor on a CPU needs a C compiler and gains little there; a GPU is what it is for
        require(resolve_device(args.device).type == "cuda", "--compile is for sampling on a GPU; leave it out on the CPU")
    variant, guide = None, args.guide_model
    if args.guidance == "cfg":
        from guidediff.loading import model_config

        # the model config's [sample] section may choose the guidance method (the variant then
        # carries its options, --guidance-opt included)
        variant, guide = cfg_variant_from_args(args, model_config(args.model).sample)
    options = method_options(args, spec) if variant is None else {}
    try:
        _sweep(args, knobs, options, variant, guide)
    except UsageError as error:
        raise in_flags(error, {"n": "--n", "steps": "--steps", "batch_size": "--batch-size",
                               "sigma_max": "--sigma-max"}) from None
    return 0


def _sweep(args, knobs, options, variant, guide) -> None:
    from guidediff.sweep import SweepSettings, run_sweep

    settings = SweepSettings(
        n=args.n, steps=args.steps, out_dir=args.out, sampler=args.sampler,
        sampler_options=sampler_options(args, args.sampler), grid=args.grid, sigma_max=args.sigma_max, seed=args.seed,
        device=args.device,
        batch_size=args.batch_size, bf16=not args.no_bf16, compile=args.compile, classifier=args.classifier,
        guidance=args.guidance, guidance_options=options, cfg_variant=variant, guide_model=guide,
        noisy_classifier=args.noisy_classifier, null_class=args.null_class, resume=args.resume,
    )
    run_sweep(args.model, knobs, settings)
