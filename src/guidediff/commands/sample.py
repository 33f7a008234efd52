"""`guidediff sample MODEL --classes 0-9 --w 0,1,3 --n 8 --out DIR`: images, grids and samples.npz."""

from __future__ import annotations

from guidediff.commands._guidance_args import add_cfg_variant_arguments, cfg_variant_from_args


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
    p.add_argument("--sampler", choices=["ddim", "ancestral"], default=None,
                   help="default: the model config's sample.sampler")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model config's sample.steps)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--v", type=float, default=None, help="ancestral variance exponent v in [0, 1] (CFG paper: 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/samples", help="output directory (default out/samples)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (a guided step runs 2x rows)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="for a checkpoint: the EMA weights (default) or the raw ones")
    p.add_argument("--no-bf16", action="store_true", help="sample in float32 on the GPU")
    p.add_argument("--grid-cols", type=int, default=16, help="at most this many samples per grid row")
    p.add_argument("--guidance", choices=["cfg", "classifier"], default="cfg",
                   help="cfg (default, weights --w) or classifier guidance with a noisy classifier (scales --scale)")
    p.add_argument("--classifier", "--noisy-classifier", dest="noisy_classifier", default=None,
                   help="classifier guidance: the noisy classifier (run dir or model.safetensors of "
                        "guidediff train-noisy-classifier)")
    p.add_argument("--scale", default=None, help="classifier guidance: comma list of scales s, e.g. 1,2,4,10 "
                                                 "(s on the uncond base tilts like CFG with w = s - 1)")
    p.add_argument("--base", choices=["uncond", "cond"], default="uncond",
                   help="classifier guidance on the model's unconditional (null-token, default) or conditional prediction")
    p.add_argument("--cg-form", choices=["score", "mean"], default="score",
                   help="classifier guidance as eps - s*sigma*grad (score, any sampler) or the ancestral mean shift "
                        "mu + s*Sigma*grad (mean, needs --sampler ancestral)")
    add_cfg_variant_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from guidediff.ddgan.detect import is_ddgan_source

    if is_ddgan_source(args.model):  # a `guidediff train-ddgan` run: T fixed steps, no guidance
        from guidediff.ddgan.sample import run_sample_command

        return run_sample_command(args)

    from guidediff.checkpoint import load_model
    from guidediff.errors import require
    from guidediff.parsing import parse_classes, parse_floats
    from guidediff.sampling import generate, resolve_device, save_samples

    require(args.n >= 1, f"--n must be >= 1, got {args.n}")
    require(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    require(args.steps is None or args.steps >= 1, f"--steps must be >= 1, got {args.steps}")
    device = resolve_device(args.device)
    net, config = load_model(args.model, device, weights=args.weights, null_class=args.null_class)
    s = config.sample
    num_classes = config.model.num_classes
    classifier = None
    if args.guidance == "classifier":
        from guidediff.classifier_guidance import load_noisy_classifier

        require(args.w is None, "--w is the CFG weight; with --guidance classifier give the scales as --scale")
        require(args.noisy_classifier is not None, "--guidance classifier needs --classifier PATH (a noisy classifier)")
        require(args.scale is not None, "--guidance classifier needs --scale, e.g. --scale 1,2,4,10")
        classifier, _ = load_noisy_classifier(args.noisy_classifier, device)
        ws = parse_floats(args.scale, "--scale")
    else:
        require(args.scale is None and args.noisy_classifier is None,
                "--scale and --classifier are for --guidance classifier; with CFG give the weights as --w")
        ws = parse_floats(args.w, "--w") if args.w is not None else list(s.w)
    require(args.guidance == "cfg" or args.cfg_variant in (None, "plain"), "--cfg-variant applies to --guidance cfg only")
    require(num_classes > 0 or args.guidance == "cfg",
            "classifier guidance here needs a class-conditional model (its label set and null token); this one "
            "is unconditional")
    if num_classes == 0:
        require(args.classes in ("all", ""), "the model is unconditional (no classes); leave --classes out")
        require(all(w == 0 for w in ws), "the model is unconditional, so there is nothing to guide: use --w 0")
        classes = [-1]
    else:
        classes = list(dict.fromkeys(parse_classes(args.classes, num_classes)))
    ws = list(dict.fromkeys(ws))
    variant, guide = cfg_variant_from_args(args, s) if args.guidance == "cfg" else (None, None)
    guide_net = load_model(guide, device)[0] if guide is not None else None
    sampler = args.sampler or s.sampler
    steps = args.steps or s.steps
    result = generate(net, config, classes, ws, args.n, sampler=sampler, steps=steps, seed=args.seed, device=device,
                      batch_size=args.batch_size, eta=s.eta if args.eta is None else args.eta,
                      v=s.v if args.v is None else args.v, bf16=False if args.no_bf16 else None,
                      guidance=args.guidance, classifier=classifier, base=args.base, cg_form=args.cg_form,
                      cfg_variant=variant, guide_net=guide_net)
    written = save_samples(args.out, result, max_cols=args.grid_cols)
    total = len(result["x"])
    knob = "w" if args.guidance == "cfg" else f"scale ({args.base} base, {args.cg_form} form)"
    print(f"wrote {total} images ({len(classes)} classes x {len(ws)} {knob} x {args.n}) with {sampler}, {steps} steps "
          f"on {device}")
    if variant is not None:
        print("guidance: " + ", ".join(f"{k} {v}" for k, v in variant.items() if k != "name") + f" ({variant['name']})"
              if len(variant) > 1 else f"guidance: {variant['name']}")
    if result.get("classifier_evals_per_image") is not None:
        print(f"classifier gradients per image: {result['classifier_evals_per_image']:.1f} (samples.npz w holds the scale)")
    print(f"NFE per image: {result['nfe_per_image']:.1f}; {result['seconds'] / total * 1e3:.2f} ms per image "
          f"({result['seconds']:.2f} s)")
    for path in written:
        print(f"  {path}")
    return 0
