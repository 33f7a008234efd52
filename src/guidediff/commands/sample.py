"""`guidediff sample MODEL --classes 0-9 --w 0,1,3 --n 8 --out DIR`: images, grids and samples.npz."""

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
from guidediff.parsing import finite_float


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="sample a trained model with classifier-free or classifier guidance (grids + samples.npz)",
        description="Writes DIR/samples.npz (x uint8 [N,H,W,C], y int64 class, w float32) and one PNG grid per w "
                    "(rows = classes). w is the CFG paper's weight: eps = (1+w)*eps(z,c) - w*eps(z,null); "
                    "diffusers' guidance_scale = 1 + w. Write negative weights as --w=-1,0,3.")
    p.add_argument("model", help="checkpoint or run directory, exported .safetensors model, a shipped model "
                                 "name (fmnist-cfg), or a diffusers UNet2DModel directory (save_pretrained)")
    p.add_argument("--null-class", type=int, default=None,
                   help="diffusers models: the label index of the null (unconditional) class (default: the last)")
    p.add_argument("--classes", default="all", help="classes to sample: all, 0-9, 0,3,5 (default: all)")
    p.add_argument("--w", default=None, help="comma list of guidance weights (default: the model config's sample.w)")
    p.add_argument("--n", type=int, default=8, help="images per (class, w) (default 8)")
    p.add_argument("--sampler", choices=sampler_names(), default=None,
                   help="default: the model config's sample.sampler")
    add_grid_argument(p)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model config's sample.steps)")
    p.add_argument("--eta", type=finite_float, default=None, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--v", type=finite_float, default=None, help="ancestral variance exponent v in [0, 1] (CFG paper: 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/samples", help="output directory (default out/samples)")
    p.add_argument("--overwrite", action="store_true", help="replace what an existing --out holds (it is refused otherwise)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (a guided step runs 2x rows)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="for a checkpoint: the EMA weights (default) or the raw ones")
    p.add_argument("--no-bf16", action="store_true", help="sample in float32 on the GPU")
    p.add_argument("--grid-cols", type=int, default=16, help="at most this many samples per grid row")
    add_registry_arguments(p)
    p.add_argument("--classifier", "--noisy-classifier", dest="noisy_classifier", default=None,
                   help="classifier guidance: the noisy classifier (run dir or model.safetensors of "
                        "guidediff train-noisy-classifier)")
    p.add_argument("--scale", default=None, help="classifier guidance: comma list of scales s, e.g. 1,2,4,10 "
                                                 "(s on the uncond base tilts like CFG with w = s - 1)")
    p.add_argument("--base", choices=["uncond", "cond"], default=None,
                   help="classifier guidance on the model's unconditional (null-token, default) or conditional prediction")
    p.add_argument("--cg-form", choices=["score", "mean"], default=None,
                   help="classifier guidance as eps - s*sigma*grad (score, any sampler) or the ancestral mean shift "
                        "mu + s*Sigma*grad (mean, needs --sampler ancestral)")
    add_cfg_variant_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from guidediff.commands._outputs import check_device, claim_out_dir
    from guidediff.ddgan.detect import is_ddgan_source

    check_device(args.device)
    claim_out_dir(args.out, overwrite=args.overwrite)
    if is_ddgan_source(args.model):
        return run_ddgan(args)

    from guidediff.loading import load_guide_model, load_model
    from guidediff.errors import UsageError, in_flags, require
    from guidediff.parsing import parse_classes
    from guidediff.generation import generate, save_samples
    from guidediff.runtime import resolve_device

    from guidediff.guidance import get_guidance

    device = resolve_device(args.device)
    net, config = load_model(args.model, device, weights=args.weights, null_class=args.null_class)
    s = config.sample
    num_classes = config.model.num_classes
    spec = get_guidance(args.guidance)
    classifier = None
    ws = guidance_weights(args, spec, list(s.w))
    if spec.needs == "classifier":
        from guidediff.classifier_guidance import load_noisy_classifier

        require(args.noisy_classifier is not None, f"--guidance {spec.name} needs --classifier PATH (a noisy classifier)")
        classifier, _ = load_noisy_classifier(args.noisy_classifier, device)
    else:
        require(args.noisy_classifier is None, "--classifier is for --guidance classifier")
    require(args.guidance == "cfg" or args.cfg_variant in (None, "plain"), "--cfg-variant applies to --guidance cfg only")
    if num_classes == 0:
        require(args.classes in ("all", ""), "the model is unconditional (no classes); leave --classes out")
        classes = [-1]
    else:
        classes = list(dict.fromkeys(parse_classes(args.classes, num_classes)))
    ws = list(dict.fromkeys(ws))
    if args.guidance == "cfg":
        # a variant carries its options, --guidance-opt included; plain CFG takes them here
        variant, guide = cfg_variant_from_args(args, s)
        variant = variant or {"name": "cfg", **method_options(args, get_guidance("cfg"))}
        method, options = variant.pop("name"), variant
        variant = None if method == "cfg" else {"name": method, **options}
    else:
        method, options, guide, variant = spec.name, method_options(args, spec), args.guide_model, None
    guide_net = load_guide_model(guide, device, net) if guide is not None else None
    sampler = args.sampler or s.sampler
    steps = s.steps if args.steps is None else args.steps
    try:
        result = generate(net, config, classes, ws, args.n, sampler=sampler, steps=steps, grid=args.grid,
                          sigma_max=args.sigma_max, seed=args.seed, device=device, batch_size=args.batch_size, bf16=False if args.no_bf16 else None,
                          guidance=method, guidance_options=options, classifier=classifier, guide_net=guide_net,
                          sampler_options=sampler_options(args, sampler, {"eta": s.eta, "v": s.v}))
    except UsageError as error:
        raise in_flags(error, {"n": "--n", "steps": "--steps", "batch_size": "--batch-size",
                               "sigma_max": "--sigma-max"}) from None
    written = save_samples(args.out, result, max_cols=args.grid_cols)
    total = len(result["x"])
    knob = "w" if spec.weight == "w" else f"scale ({spec.name}{''.join(f', {v}' for v in options.values())})"
    print(f"wrote {total} images ({len(classes)} classes x {len(ws)} {knob} x {args.n}) with {sampler}, {steps} steps ({args.grid} grid"
          f"{'' if args.sigma_max is None else f' from sigma/alpha {args.sigma_max:g}'}) on {device}")
    if variant is not None:
        print("guidance: " + ", ".join(f"{k} {v}" for k, v in variant.items() if k != "name") + f" ({variant['name']})"
              if len(variant) > 1 else f"guidance: {variant['name']}")
    elif method not in ("cfg", "classifier"):
        print(f"guidance: {method}" + "".join(f", {k} {v}" for k, v in options.items()))
    if result.get("classifier_evals_per_image") is not None:
        print(f"classifier gradients per image: {result['classifier_evals_per_image']:.1f} (samples.npz w holds the scale)")
    print(f"NFE per image: {result['nfe_per_image']:.1f}; {result['seconds'] / total * 1e3:.2f} ms per image "
          f"({result['seconds']:.2f} s)")
    for path in written:
        print(f"  {path}")
    return 0


# `guidediff sample` options that DDGAN cannot honour, with the value that means "not given"
_DIFFUSION_ONLY = (("w", "--w", None), ("guidance", "--guidance", "cfg"), ("cfg_variant", "--cfg-variant", None),
                   ("sampler", "--sampler", None), ("grid", "--grid", "u"),
                   ("sigma_max", "--sigma-max", None), ("steps", "--steps", None), ("eta", "--eta", None),
                   ("v", "--v", None), ("scale", "--scale", None), ("noisy_classifier", "--classifier", None),
                   ("interval", "--interval", None), ("guide_model", "--guide-model", None),
                   ("guidance_opt", "--guidance-opt", None), ("sampler_opt", "--sampler-opt", None))


def run_ddgan(args) -> int:
    """The DDGAN branch of `guidediff sample` (a `guidediff train-ddgan` run: T fixed steps, no
    guidance): refuse the diffusion-only options, sample with ddgan.sample.sample_to_dir, report."""
    from guidediff.ddgan.sample import sample_to_dir
    from guidediff.errors import require
    from guidediff.parsing import parse_floats
    from guidediff.runtime import resolve_device

    for attr, flag, unset in _DIFFUSION_ONLY:
        value = getattr(args, attr, unset)
        if attr == "w" and value is not None and all(w == 0 for w in parse_floats(value, "--w")):
            continue
        require(value == unset, f"{flag} does not apply to a DDGAN model: it samples with the T steps fixed at "
                "training and has no guidance; leave it out")
    require(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    result, config, written = sample_to_dir(
        args.model, args.out, args.n, classes=None if args.classes == "all" else args.classes, seed=args.seed,
        device=args.device, batch_size=args.batch_size, weights=args.weights,
        bf16=False if args.no_bf16 else None, max_cols=args.grid_cols)
    total = len(result["x"])
    rows = f"{len(set(result['y'].tolist()))} classes" if config.data.conditional else "unconditional"
    print(f"wrote {total} {'images' if result['x'].ndim == 4 else 'points'} ({rows} x {args.n}) with "
          f"DDGAN T={config.diffusion.T} on {resolve_device(args.device)}")
    print(f"NFE per image: {result['nfe_per_image']}; {result['seconds'] / total * 1e3:.2f} ms per image "
          f"({result['seconds']:.2f} s)")
    for path in written:
        print(f"  {path}")
    return 0
