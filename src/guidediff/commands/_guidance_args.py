"""The CFG-variant options shared by `guidediff sample` and `guidediff sweep`."""

from __future__ import annotations

def variant_names() -> list[str]:
    from guidediff.guidance.registry import cfg_variants

    return cfg_variants()


def guidance_names() -> list[str]:
    """The methods a user can pick (the distilled student's is picked by its model)."""
    from guidediff.guidance import GUIDANCE

    return [name for name in GUIDANCE if name != "distilled"]


def add_registry_arguments(p) -> None:
    """--guidance (any registered method), --guidance-opt and --sampler-opt NAME=VALUE (any
    option a registered method or sampler declares; the flags below are shorthands for the built-in ones)."""
    p.add_argument("--guidance", choices=guidance_names(), default="cfg",
                   help="guidance method (default cfg; classifier needs --classifier and takes --scale)")
    p.add_argument("--guidance-opt", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of the guidance method, e.g. --guidance-opt phi=0.5 (repeatable)")
    p.add_argument("--sampler-opt", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of the sampler, e.g. --sampler-opt clip_x=none (repeatable)")


def guidance_weights(args, spec, default_w) -> list[float]:
    """The knob values: --scale for a method weighted by a scale (classifier guidance), else --w
    (``default_w``, a list or comma text, when --w is left out)."""
    from guidediff.errors import require
    from guidediff.parsing import parse_floats

    if spec.weight == "scale":
        require(args.w is None, f"--w is the CFG weight; with --guidance {spec.name} give the scales as --scale")
        require(args.scale is not None, f"--guidance {spec.name} needs --scale, e.g. --scale 1,2,4,10")
        return list(parse_floats(args.scale, "--scale"))
    require(args.scale is None, "--scale is for --guidance classifier; with CFG give the weights as --w")
    if args.w is None and not isinstance(default_w, str):
        return list(default_w)
    return list(parse_floats(args.w or default_w, "--w"))


def method_options(args, spec) -> dict:
    """The method's options given on the command line: classifier guidance's own flags (--base,
    --cg-form) and --guidance-opt NAME=VALUE."""
    from guidediff.options import parse_assignments

    declared = {o.name: o for o in spec.options}
    given = {name: getattr(args, name) for name in ("base", "cg_form")
             if name in declared and getattr(args, name, None) is not None}
    given.update(parse_assignments(args.guidance_opt, declared, f"guidance {spec.name}", "--guidance-opt"))
    return given


def sampler_options(args, sampler: str, defaults: dict | None = None) -> dict:
    """The sampler's options: ``defaults`` it declares (e.g. the config's eta, v), its flags
    (--eta, --v) and --sampler-opt NAME=VALUE."""
    from guidediff.options import parse_assignments
    from guidediff.samplers import get_sampler

    declared = {o.name: o for o in get_sampler(sampler).options}
    out = {k: v for k, v in (defaults or {}).items() if k in declared}
    out.update({name: getattr(args, name) for name in declared if getattr(args, name, None) is not None})
    out.update(parse_assignments(args.sampler_opt, declared, f"sampler {sampler}", "--sampler-opt"))
    return out


def add_cfg_variant_arguments(p) -> None:
    from guidediff.parsing import finite_float

    p.add_argument("--cfg-variant", choices=variant_names(), default=None,
                   help="CFG as in the paper (plain), or: guidance only for lambda in --interval (interval), "
                        "CFG rescale with --phi (rescale), adaptive projected guidance (apg), or autoguidance "
                        "with --guide-model in place of the unconditional prediction (default: the model config's "
                        "sample.cfg_variant, else plain)")
    p.add_argument("--interval", default=None, metavar="LO,HI", help="interval: the log-SNR range that is guided")
    p.add_argument("--phi", type=finite_float, default=None, help="rescale: 0 is plain CFG, 1 full rescale (default 0.7)")
    p.add_argument("--apg-eta", type=finite_float, default=None, help="apg: weight of the parallel part (1: plain CFG; default 0)")
    p.add_argument("--apg-momentum", type=finite_float, default=None, help="apg: momentum beta (the paper uses -0.5; default 0)")
    p.add_argument("--apg-threshold", type=finite_float, default=None, help="apg: norm threshold r of the update")
    p.add_argument("--guide-model", default=None,
                   help="autoguidance: the guide, a less-trained or smaller model of the same data (run dir, "
                        "checkpoint or exported file)")


def cfg_variant_from_args(args, sample_config=None) -> tuple[dict | None, str | None]:
    """(generate's ``cfg_variant``, None for plain CFG; the guide model's path for autoguidance,
    else None) from the --cfg-variant options. An option left out on the command line takes the
    model config's [sample] value (``sample_config``), so a config can choose the method; a
    --cfg-variant given on the command line uses only its own options and the built-in defaults.

    Precedence, highest first: the dedicated flags (--phi, --interval, --apg-*), --guidance-opt,
    the config's [sample.guidance_options] table, its fixed fields (phi, interval, apg_*), the
    method's registered defaults."""
    from guidediff.config import SampleConfig
    from guidediff.errors import require
    from guidediff.guidance import get_guidance

    from_config = args.cfg_variant is None and sample_config is not None
    sc = sample_config if from_config else SampleConfig()
    name = args.cfg_variant or sc.cfg_variant
    guide = args.guide_model if args.guide_model is not None else (sc.guide_model or None)
    require(name == "autoguidance" or guide is None, "--guide-model is used only by --cfg-variant autoguidance")
    if name == "plain":
        require(args.interval is None and not sc.interval, "--interval needs --cfg-variant interval")
        return None, None
    fields, flags = _builtin_options(name, args, sc)
    options = {**fields, **sc.guidance_options, **method_options(args, get_guidance(name)), **flags}
    if name == "autoguidance":
        require(guide is not None, "--cfg-variant autoguidance needs --guide-model PATH (or sample.guide_model)")
        return {"name": name, **options}, guide
    if name == "interval":
        lo, hi = options.get("lam_lo"), options.get("lam_hi")
        require(lo is not None and hi is not None, "--cfg-variant interval needs --interval LO,HI (log-SNR), e.g. "
                "--interval=-4,4 (or sample.guidance_options lam_lo, lam_hi)")
        require(lo < hi, f"--interval takes two log-SNRs LO,HI with LO < HI, got {lo},{hi}")
    if name == "rescale":
        require(0.0 <= options["phi"] <= 1.0, f"--phi must lie in [0, 1], got {options['phi']}")
    if name == "apg":
        require(options["norm_threshold"] is None or options["norm_threshold"] > 0, "--apg-threshold must be positive")
    return {"name": name, **options}, None


def _builtin_options(name: str, args, sc) -> tuple[dict, dict]:
    """(options from the config's fixed [sample] fields, options from the dedicated flags) of the
    built-in variants interval, rescale and apg; nothing for any other method."""
    if name == "interval":
        field = ",".join(map(str, sc.interval)) or None
        return (_bounds(field, "sample.interval") if field is not None else {},
                _bounds(args.interval, "--interval") if args.interval is not None else {})
    if name == "rescale":
        return {"phi": sc.phi}, ({} if args.phi is None else {"phi": args.phi})
    if name == "apg":
        flags = {"eta": args.apg_eta, "momentum": args.apg_momentum, "norm_threshold": args.apg_threshold}
        return ({"eta": sc.apg_eta, "momentum": sc.apg_momentum, "norm_threshold": sc.apg_threshold or None},
                {k: v for k, v in flags.items() if v is not None})
    return {}, {}


def _bounds(text: str, where: str) -> dict:
    from guidediff.errors import require
    from guidediff.parsing import parse_floats

    bounds = parse_floats(text, where, example="-4,4")
    require(len(bounds) == 2 and bounds[0] < bounds[1], f"{where} takes two log-SNRs LO,HI with LO < HI, got {text}")
    return {"lam_lo": bounds[0], "lam_hi": bounds[1]}
