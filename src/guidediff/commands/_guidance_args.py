"""The CFG-variant options shared by `guidediff sample` and `guidediff sweep`."""

from __future__ import annotations

VARIANTS = ("plain", "interval", "rescale", "apg", "autoguidance")


def add_cfg_variant_arguments(p) -> None:
    p.add_argument("--cfg-variant", choices=VARIANTS, default="plain",
                   help="CFG as in the paper (plain), or: guidance only for lambda in --interval (interval), "
                        "CFG rescale with --phi (rescale), adaptive projected guidance (apg), or autoguidance "
                        "with --guide-model in place of the unconditional prediction")
    p.add_argument("--interval", default=None, metavar="LO,HI", help="interval: the log-SNR range that is guided")
    p.add_argument("--phi", type=float, default=0.7, help="rescale: 0 is plain CFG, 1 full rescale (default 0.7)")
    p.add_argument("--apg-eta", type=float, default=0.0, help="apg: weight of the parallel part (1: plain CFG)")
    p.add_argument("--apg-momentum", type=float, default=0.0, help="apg: momentum beta (the paper uses -0.5)")
    p.add_argument("--apg-threshold", type=float, default=None, help="apg: norm threshold r of the update")
    p.add_argument("--guide-model", default=None,
                   help="autoguidance: the guide, a less-trained or smaller model of the same data (run dir, "
                        "checkpoint or exported file)")


def cfg_variant_from_args(args) -> dict | None:
    """The --cfg-variant options as generate's ``cfg_variant``; None for plain CFG."""
    from guidediff.errors import require
    from guidediff.parsing import parse_floats

    require(args.cfg_variant == "autoguidance" or args.guide_model is None,
            "--guide-model is used only by --cfg-variant autoguidance")
    if args.cfg_variant == "plain":
        require(args.interval is None, "--interval needs --cfg-variant interval")
        return None
    if args.cfg_variant == "autoguidance":
        require(args.guide_model is not None, "--cfg-variant autoguidance needs --guide-model PATH")
        return {"name": "autoguidance"}
    if args.cfg_variant == "interval":
        require(args.interval is not None, "--cfg-variant interval needs --interval LO,HI (log-SNR), e.g. --interval=-4,4")
        bounds = parse_floats(args.interval, "--interval")
        require(len(bounds) == 2 and bounds[0] < bounds[1], f"--interval takes two log-SNRs LO,HI with LO < HI, got "
                f"{args.interval}")
        return {"name": "interval", "lam_lo": bounds[0], "lam_hi": bounds[1]}
    if args.cfg_variant == "rescale":
        require(0.0 <= args.phi <= 1.0, f"--phi must lie in [0, 1], got {args.phi}")
        return {"name": "rescale", "phi": args.phi}
    require(args.apg_threshold is None or args.apg_threshold > 0, "--apg-threshold must be positive")
    return {"name": "apg", "eta": args.apg_eta, "momentum": args.apg_momentum, "norm_threshold": args.apg_threshold}
