"""`guidediff sweep CKPT --w ... --n ... --steps ...`: the guidance trade-off curve."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="sample at several guidance weights and evaluate each (FID/IS/CAS/P/R)")
    p.add_argument("model", help="checkpoint directory, exported model file, or shipped model name (fmnist-cfg)")
    p.add_argument("--w", default="0,0.1,0.3,0.5,1,2,3,4", help="comma list of CFG weights w (diffusers' scale = 1 + w)")
    p.add_argument("--n", type=int, default=10000, help="images per w, split evenly over the classes")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ancestral"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--classifier", default=None, help="evaluation classifier weights (default: the shipped one)")
    p.add_argument("--no-bf16", action="store_true", help="sample in float32 on the GPU")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from guidediff.parsing import parse_floats
    from guidediff.sweep import run_sweep

    run_sweep(
        args.model, parse_floats(args.w, "--w"), n=args.n, steps=args.steps, out_dir=args.out,
        sampler=args.sampler, seed=args.seed, device=args.device, batch_size=args.batch_size,
        classifier=args.classifier, bf16=not args.no_bf16,
    )
    return 0
