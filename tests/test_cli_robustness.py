"""Every subcommand against bad input (issue 19): missing, wrong-kind and unwritable paths, bad
devices, non-finite and out-of-range numbers, malformed JSON/NPZ/TOML, a model of another kind,
results already in --out. Each case must exit non-zero with a one-line error (argparse's own
usage errors aside), raise no traceback, change no file of a pre-existing --out and leave no
half-written file or empty folder behind. The cases run in-process (guidediff.cli.main); a few
run as real processes to show what reaches the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guidediff.cli import main
from guidediff.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_test.toml"
NO_GPU = not torch.cuda.is_available()


# -- the world the cases run in: tiny models and bad files, made once -----------------------------

@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No downloads: an empty --data-dir must fail, not fetch Fashion-MNIST."""
    import urllib.error

    from guidediff.data import fmnist

    def offline(url, dest):
        raise urllib.error.URLError("offline in tests")

    monkeypatch.setattr(fmnist, "_fetch", offline)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    from guidediff.checkpoint import save_model
    from guidediff.config import load_config
    from guidediff.ddgan import train as ddgan_train
    from guidediff.ddgan.config import load_config as load_ddgan_config
    from guidediff.nets.unet import UNet

    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    config = load_config(TINY, ["model.image_size=28", "model.in_channels=1", "model.num_classes=10"])
    state = UNet(config.model).state_dict()
    w: dict[str, Path] = {"root": root}
    w["model"] = save_model(state, config, root / "cfg" / "model.safetensors", dtype="float32")
    poisoned = {k: v.clone() for k, v in state.items()}
    next(v for v in poisoned.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    w["nan_model"] = save_model(poisoned, config, root / "nan" / "model.safetensors", dtype="float32")

    ddgan = load_ddgan_config("grid25", None, ["diffusion.T=2", "train.steps=1", "train.batch_size=4",
                                               'train.device="cpu"', "generator.hidden=8", "discriminator.hidden=8"])
    data = ddgan_train.TrainingData(torch.randn(16, 2), torch.zeros(16, dtype=torch.long), 0, (2,))
    ddgan_train.train(ddgan, root / "ddgan", progress=False, data=data)
    w["ddgan"] = root / "ddgan"

    w["text"] = root / "notes.txt"
    w["text"].write_text("not a model\n")
    w["text_npz"] = root / "text.npz"
    w["text_npz"].write_text("x,y\n1,2\n")
    w["npz_no_x"] = root / "nox.npz"
    np.savez(w["npz_no_x"], images=np.zeros((2, 28, 28, 1), np.uint8))
    w["samples"] = root / "samples.npz"
    np.savez(w["samples"], x=np.zeros((4, 28, 28, 1), np.uint8), y=np.zeros(4, np.int64), w=np.zeros(4, np.float32))
    w["bad_toml"] = root / "bad.toml"
    w["bad_toml"].write_text("[train\nsteps = \n")
    w["binary_toml"] = root / "binary.toml"
    w["binary_toml"].write_bytes(b"\xff\xfe\x00garbage")
    w["bad_sweep"] = root / "badsweep"
    w["bad_sweep"].mkdir()
    (w["bad_sweep"] / "sweep.json").write_text("{not json")
    w["empty"] = root / "empty"
    w["empty"].mkdir()
    w["diffusers"] = root / "diffusers_unet"  # only what marks a diffusers directory: no diffusers needed
    w["diffusers"].mkdir()
    (w["diffusers"] / "config.json").write_text('{"_class_name": "UNet2DModel", "num_class_embeds": 11}')
    return w


# -- running one case ---------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _full_out(parent: Path) -> Path:
    """A folder holding earlier results that no bad run may touch."""
    full = parent / "full"
    full.mkdir()
    (full / "samples.npz").write_bytes(b"forty earlier samples")
    (full / "grid_w0.png").write_bytes(b"an earlier grid")
    (full / "sweep.json").write_text('{"points": [{"w": 0.0, "fid": 1.0}]}')
    (full / "report.html").write_text("<p>an earlier report</p>")
    return full


def _expand(argv: list[str], world: dict[str, Path], case_dir: Path) -> tuple[list[str], Path | None]:
    full = None
    places = {**{k: str(v) for k, v in world.items()},
              "new": str(case_dir / "new"), "json_new": str(case_dir / "new" / "m.json"),
              "afile": str(world["text"]), "under_file": str(world["text"] / "sub"), "proc": "/proc/guidediff-out",
              "case": str(case_dir)}
    out = []
    for arg in argv:
        if "{full}" in arg:
            full = full or _full_out(case_dir)
            arg = arg.replace("{full}", str(full))
        out.append(arg.format(**places) if "{" in arg else arg)
    return out, full


def run_case(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `guidediff argv` in this process; argparse's exits count too.
    Any other exception propagates, with its traceback: the failure this test looks for."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage line + "error: ..."
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def check_refused(argv, world, tmp_path, capsys, expect: str | None = None) -> str:
    args, full = _expand(argv, world, tmp_path)
    before = _snapshot(full) if full else None
    code, err = run_case(args, capsys)
    assert code != 0, f"exit 0 for bad input: guidediff {' '.join(args)}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "error:" in lines[-1], f"no error line for {args}: {err!r}"
    # one error line, the last (argparse's usage lines or a progress note such as "downloading" may precede it)
    assert sum("error:" in line for line in lines) == 1, f"more than one error line for {args}: {err!r}"
    assert "Traceback" not in err
    if expect:
        assert expect.lower() in err.lower(), f"{args}: {err!r} does not say {expect!r}"
    if full is not None:
        assert _snapshot(full) == before, f"{args} changed files in the pre-existing --out {full}"
    assert not (tmp_path / "new").exists(), f"{args} left {tmp_path / 'new'} behind"
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name == ".guidediff.lock"]
    assert not leftovers, f"{args} left {leftovers}"
    return err


# -- the table: (command, bad input) ------------------------------------------------------------

M = ["--device", "cpu"]
CASES: list[tuple[str, list[str], str | None]] = [
    # sample
    ("sample: missing model", ["sample", "{case}/nope", "--out", "{new}", *M], "does not exist"),
    ("sample: text file as model", ["sample", "{text}", "--out", "{new}", *M], "neither"),
    ("sample: empty folder as model", ["sample", "{empty}", "--out", "{new}", *M], "holds no checkpoint"),
    ("sample: NaN weights", ["sample", "{nan_model}", "--out", "{new}", "--n", "1", *M], "non-finite"),
    ("sample: results in --out", ["sample", "{model}", "--out", "{full}", *M], "--overwrite"),
    ("sample: --out is a file", ["sample", "{model}", "--out", "{afile}", *M], "is a file"),
    ("sample: --out under a file", ["sample", "{model}", "--out", "{under_file}", *M], "file"),
    ("sample: --out unwritable", ["sample", "{model}", "--out", "{proc}", *M], "cannot"),
    ("sample: --device foo", ["sample", "{model}", "--out", "{new}", "--device", "foo"], "not a device"),
    ("sample: --n 0", ["sample", "{model}", "--out", "{new}", "--n", "0", *M], "--n"),
    ("sample: --w nan", ["sample", "{model}", "--out", "{new}", "--w", "nan", *M], "finite"),
    ("sample: --w text", ["sample", "{model}", "--out", "{new}", "--w", "abc", *M], "not a number"),
    ("sample: --classes 99", ["sample", "{model}", "--out", "{new}", "--classes", "99", *M], "out of range"),
    ("sample: --weights model on an export", ["sample", "{model}", "--out", "{new}", "--weights", "model", *M],
     "exported"),
    ("sample: DDGAN guide", ["sample", "{model}", "--out", "{new}", "--cfg-variant", "autoguidance",
                             "--guide-model", "{ddgan}", *M], "DDGAN"),
    ("sample: --interval text", ["sample", "{model}", "--out", "{new}", "--cfg-variant", "interval",
                                 "--interval", "a,b", *M], "--interval=-4,4"),
    ("sample: --phi nan", ["sample", "{model}", "--out", "{new}", "--cfg-variant", "rescale", "--phi", "nan", *M],
     "--phi"),
    ("sample: --eta nan", ["sample", "{model}", "--out", "{new}", "--eta", "nan", *M], "--eta: must be a finite"),
    ("sample: --v nan", ["sample", "{model}", "--out", "{new}", "--v", "nan", *M], "--v: must be a finite"),
    ("sample: --apg-momentum inf", ["sample", "{model}", "--out", "{new}", "--cfg-variant", "apg", "--apg-momentum",
                                    "inf", *M], "--apg-momentum: must be a finite"),
    ("sample: --sampler-opt s_noise=nan", ["sample", "{model}", "--out", "{new}", "--sampler", "heun", "--sampler-opt",
                                           "s_noise=nan", *M], "--sampler-opt s_noise=nan"),
    ("sample: --sampler-opt clip_x=inf", ["sample", "{model}", "--out", "{new}", "--sampler-opt", "clip_x=inf", *M],
     "must be a finite"),
    ("sample: --guidance-opt phi=nan", ["sample", "{model}", "--out", "{new}", "--guidance", "rescale",
                                        "--guidance-opt", "phi=nan", *M], "--guidance-opt phi=nan"),
    # sweep
    ("sweep: missing model", ["sweep", "{case}/nope", "--out", "{new}", *M], "does not exist"),
    ("sweep: DDGAN model", ["sweep", "{ddgan}", "--out", "{new}", *M], "DDGAN"),
    ("sweep: NaN weights", ["sweep", "{nan_model}", "--out", "{new}", *M], "non-finite"),
    ("sweep: results in --out", ["sweep", "{model}", "--out", "{full}", *M], "--resume"),
    ("sweep: --overwrite with --resume", ["sweep", "{model}", "--out", "{full}", "--overwrite", "--resume", *M],
     "one of them"),
    ("sweep: --out is a file", ["sweep", "{model}", "--out", "{afile}", *M], "is a file"),
    ("sweep: --out unwritable", ["sweep", "{model}", "--out", "{proc}", *M], "cannot"),
    ("sweep: --device foo", ["sweep", "{model}", "--out", "{new}", "--device", "foo"], "not a device"),
    ("sweep: --n 5", ["sweep", "{model}", "--out", "{new}", "--n", "5", *M], "--n"),
    ("sweep: --steps 0", ["sweep", "{model}", "--out", "{new}", "--steps", "0", *M], "--steps"),
    ("sweep: --w inf", ["sweep", "{model}", "--out", "{new}", "--w", "0,inf", *M], "finite"),
    # toy
    ("toy: results in --out", ["toy", "--oracle", "--out", "{full}"], "--overwrite"),
    ("toy: --out is a file", ["toy", "--oracle", "--out", "{afile}"], "is a file"),
    ("toy: --batch-size 0", ["toy", "--out", "{new}", "--batch-size", "0"], "batch size"),
    ("toy: --threads 0", ["toy", "--out", "{new}", "--threads", "0"], "threads"),
    ("toy: --lam-min nan", ["toy", "--oracle", "--out", "{new}", "--lam-min", "nan"], "finite"),
    ("toy: --data unknown", ["toy", "--oracle", "--out", "{new}", "--data", "moons"], None),
    ("toy: --w nan", ["toy", "--oracle", "--out", "{new}", "--w", "nan"], "finite"),
    # demo
    ("demo: results in --out", ["demo", "--out", "{full}"], "--overwrite"),
    ("demo: --threads 0", ["demo", "--out", "{new}", "--threads", "0"], "--threads"),
    # distill
    ("distill: missing teacher", ["distill", "{case}/nope", "--out", "{new}", *M], "does not exist"),
    ("distill: DDGAN teacher", ["distill", "{ddgan}", "--out", "{new}", *M], "DDGAN"),
    ("distill: diffusers teacher", ["distill", "{diffusers}", "--out", "{new}", *M], "diffusers UNet2DModel"),
    ("distill: NaN teacher", ["distill", "{nan_model}", "--out", "{new}", *M], "non-finite"),
    ("distill: results in --out", ["distill", "{model}", "--out", "{full}", *M], "--overwrite"),
    ("distill: --out unwritable", ["distill", "{model}", "--out", "{proc}", *M], "cannot"),
    ("distill: --lr nan", ["distill", "{model}", "--out", "{new}", "--lr", "nan", *M], "--lr"),
    ("distill: --device foo", ["distill", "{model}", "--out", "{new}", "--device", "foo"], "not a device"),
    ("distill: empty --data-dir", ["distill", "{model}", "--out", "{new}", "--data-dir", "{empty}", "--steps", "1",
                                   *M], "data"),
    # bpd
    ("bpd: missing model", ["bpd", "{case}/nope", *M], "does not exist"),
    ("bpd: DDGAN model", ["bpd", "{ddgan}", *M], "DDGAN"),
    ("bpd: NaN weights", ["bpd", "{nan_model}", *M], "non-finite"),
    ("bpd: --json is a folder", ["bpd", "{model}", "--json", "{empty}", *M], "is a folder"),
    ("bpd: --json unwritable", ["bpd", "{model}", "--json", "{under_file}/b.json", *M], "file"),
    ("bpd: --json exists", ["bpd", "{model}", "--json", "{full}/sweep.json", *M], "--overwrite"),
    ("bpd: --pilot 0", ["bpd", "{model}", "--pilot", "0", *M], "--pilot"),
    ("bpd: importance in discrete time", ["bpd", "{model}", "--steps", "10", "--estimator", "importance", *M],
     "--steps 0"),
    ("bpd: --device foo", ["bpd", "{model}", "--device", "foo"], "not a device"),
    ("bpd: --n 0", ["bpd", "{model}", "--n", "0", *M], "--n"),
    ("bpd: empty --data-dir", ["bpd", "{model}", "--data-dir", "{empty}", "--n", "1", *M], "data"),
    # eval
    ("eval: missing samples", ["eval", "{case}/nope.npz", *M], "exist"),
    ("eval: text file as .npz", ["eval", "{text_npz}", *M], "not a zip"),
    ("eval: .npz without x", ["eval", "{npz_no_x}", *M], "no 'x'"),
    ("eval: --json exists", ["eval", "{samples}", "--json", "{full}/sweep.json", *M], "--overwrite"),
    ("eval: --json is a folder", ["eval", "{samples}", "--json", "{empty}", *M], "is a folder"),
    ("eval: --json unwritable", ["eval", "{samples}", "--json", "{proc}/m.json", *M], "cannot"),
    ("eval: --device foo", ["eval", "{samples}", "--device", "foo"], "not a device"),
    ("eval: --batch-size 0", ["eval", "{samples}", "--batch-size", "0", *M], "--batch-size"),
    # report
    ("report: missing folder", ["report", "{case}/nope"], "does not exist"),
    ("report: empty folder", ["report", "{empty}", "--out", "{case}/r.html"], "nothing to report"),
    ("report: malformed sweep.json", ["report", "{bad_sweep}", "--out", "{case}/r.html"], "not valid JSON"),
    ("report: --out exists", ["report", "{bad_sweep}", "--out", "{full}/grid_w0.png"], "--overwrite"),
    ("report: report.html exists", ["report", "{full}"], "--overwrite"),
    ("report: --out is a folder", ["report", "{bad_sweep}", "--out", "{empty}"], "is a folder"),
    ("report: --out unwritable", ["report", "{bad_sweep}", "--out", "{under_file}/r.html"], "file"),
    # posthoc-ema
    ("posthoc-ema: missing run", ["posthoc-ema", "{case}/nope", "--sigma-rel", "0.07"], "does not exist"),
    ("posthoc-ema: run without snapshots", ["posthoc-ema", "{empty}", "--sigma-rel", "0.07"], "no post-hoc EMA"),
    ("posthoc-ema: --sigma-rel 0.5", ["posthoc-ema", "{empty}", "--sigma-rel", "0.5"], "--sigma-rel"),
    # train
    ("train: malformed TOML", ["train", "--config", "{bad_toml}", "--out", "{new}"], "not valid TOML"),
    ("train: binary TOML", ["train", "--config", "{binary_toml}", "--out", "{new}"], "not text"),
    ("train: missing config", ["train", "--config", "{case}/nope.toml", "--out", "{new}"], "does not exist"),
    ("train: folder as config", ["train", "--config", "{empty}", "--out", "{new}"], "is a folder"),
    ("train: results in --out", ["train", "--config", str(TINY), "--out", "{full}"], "--resume"),
    ("train: --out unwritable", ["train", "--config", str(TINY), "--out", "{proc}"], "cannot"),
    ("train: --out is a file", ["train", "--config", str(TINY), "--out", "{afile}"], "is a file"),
    ("train: --max-steps 0", ["train", "--config", str(TINY), "--out", "{new}", "--max-steps", "0"], "--max-steps"),
    ("train: --time-limit nan", ["train", "--config", str(TINY), "--out", "{new}", "--time-limit", "nan"],
     "--time-limit"),
    ("train: unknown key", ["train", "--config", str(TINY), "--out", "{new}", "--set", "train.stepz=3"], "unknown"),
    # train-ddgan
    ("train-ddgan: --resume of a missing run", ["train-ddgan", "--out", "{new}", "--resume"], "does not exist"),
    ("train-ddgan: results in --out", ["train-ddgan", "--out", "{full}", "--data", "grid25"], "--resume"),
    ("train-ddgan: --out unwritable", ["train-ddgan", "--out", "{proc}", "--data", "grid25"], "cannot"),
    ("train-ddgan: malformed TOML", ["train-ddgan", "--out", "{new}", "--config", "{bad_toml}"], "TOML"),
    ("train-ddgan: --device foo", ["train-ddgan", "--out", "{new}", "--device", "foo"], "invalid choice"),
    # train-classifier, train-noisy-classifier
    ("train-classifier: --out is a folder", ["train-classifier", "--out", "{empty}", *M], "is a folder"),
    ("train-classifier: --out unwritable", ["train-classifier", "--out", "{proc}/c.safetensors", *M], "cannot"),
    ("train-classifier: --out exists", ["train-classifier", "--out", "{full}/samples.npz", *M], "--overwrite"),
    ("train-classifier: --device foo", ["train-classifier", "--out", "{case}/c.safetensors", "--device", "foo"],
     "not a device"),
    ("train-noisy-classifier: malformed TOML", ["train-noisy-classifier", "--config", "{bad_toml}", "--out", "{new}"],
     "TOML"),
    ("train-noisy-classifier: results in --out", ["train-noisy-classifier", "--config", str(TINY), "--out", "{full}"],
     "--resume"),
]
if NO_GPU:
    CASES += [(f"{cmd}: --device cuda without a GPU", argv, "no GPU") for cmd, argv in [
        ("sample", ["sample", "{model}", "--out", "{new}", "--device", "cuda"]),
        ("sweep", ["sweep", "{model}", "--out", "{new}", "--device", "cuda"]),
        ("distill", ["distill", "{model}", "--out", "{new}", "--device", "cuda"]),
        ("bpd", ["bpd", "{model}", "--device", "cuda"]),
        ("eval", ["eval", "{samples}", "--device", "cuda:0"]),
        ("train-classifier", ["train-classifier", "--out", "{case}/c.safetensors", "--device", "cuda"]),
        ("train-ddgan", ["train-ddgan", "--out", "{new}", "--data", "grid25", "--device", "cuda", "--steps", "1"]),
    ]]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(argv, expect, world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GUIDEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    check_refused(argv, world, tmp_path, capsys, expect)


def test_every_subcommand_is_in_the_table():
    from guidediff.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= {c[0].split(":")[0] for c in CASES}


# -- generated numbers: non-finite, zero and negative values of the numeric flags --------------

NUMERIC = [  # (argv before the flag, flag, which bad values)
    (["sample", "{model}", "--out", "{new}", *M], "--n", "count"),
    (["sample", "{model}", "--out", "{new}", *M], "--steps", "count"),
    (["sample", "{model}", "--out", "{new}", *M], "--batch-size", "count"),
    (["sample", "{model}", "--out", "{new}", *M], "--w", "nonfinite"),
    (["sample", "{model}", "--out", "{new}", *M], "--eta", "nonfinite1"),
    (["sample", "{model}", "--out", "{new}", *M], "--v", "nonfinite1"),
    (["sample", "{model}", "--out", "{new}", "--cfg-variant", "rescale", *M], "--phi", "nonfinite1"),
    (["sample", "{model}", "--out", "{new}", "--sampler", "heun", *M], "--sampler-opt=s_churn", "nonfinite1"),
    (["sweep", "{model}", "--out", "{new}", *M], "--w", "nonfinite"),
    (["sweep", "{model}", "--out", "{new}", *M], "--batch-size", "count"),
    (["toy", "--oracle", "--out", "{new}"], "--n", "count"),
    (["toy", "--oracle", "--out", "{new}"], "--steps", "count"),
    (["toy", "--oracle", "--out", "{new}"], "--batch-size", "count"),
    (["toy", "--oracle", "--out", "{new}"], "--threads", "count"),
    (["toy", "--oracle", "--out", "{new}"], "--lam-max", "nonfinite"),
    (["distill", "{model}", "--out", "{new}", *M], "--lr", "positive"),
    (["distill", "{model}", "--out", "{new}", *M], "--w-max", "positive"),
    (["distill", "{model}", "--out", "{new}", *M], "--minutes", "positive"),
    (["distill", "{model}", "--out", "{new}", *M], "--batch-size", "count"),
    (["bpd", "{model}", *M], "--batch-size", "count"),
    (["bpd", "{model}", *M], "--steps", "negative"),
    (["eval", "{samples}", *M], "--batch-size", "count"),
    (["train", "--config", str(TINY), "--out", "{new}"], "--time-limit", "positive"),
    (["train", "--config", str(TINY), "--out", "{new}"], "--max-steps", "count"),
    (["train-ddgan", "--data", "grid25", "--out", "{new}", "--device", "cpu"], "--minutes", "positive"),
    (["train-ddgan", "--data", "grid25", "--out", "{new}", "--device", "cpu"], "--samples", "count"),
]
BAD = {
    "count": st.integers(max_value=0).map(str),
    "negative": st.integers(max_value=-1).map(str),
    "positive": st.one_of(st.sampled_from(["nan", "inf", "-inf"]), st.floats(max_value=0.0).map(repr)),
    "nonfinite": st.sampled_from(["nan", "inf", "-inf", "1e999", "0,nan", "1,-inf,2"]),
    "nonfinite1": st.sampled_from(["nan", "inf", "-inf", "1e999", "-nan"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_bad_numbers(data, world, capsys):
    argv, flag, kind = data.draw(st.sampled_from(NUMERIC), label="command")
    value = data.draw(BAD[kind], label=flag)
    with tempfile.TemporaryDirectory() as tmp:
        check_refused([*argv, f"{flag}={value}"], world, Path(tmp), capsys)


# -- the policy itself: overwrite, lock, resume ---------------------------------------------------

def sample_argv(world, out, *extra):
    return ["sample", str(world["model"]), "--classes", "0", "--w", "0", "--n", "1", "--steps", "1",
            "--out", str(out), *M, *extra]


def test_overwrite_replaces_and_lock_keeps_a_second_writer_out(world, tmp_path, capsys):
    full = _full_out(tmp_path)
    assert run_case(sample_argv(world, full, "--overwrite"), capsys)[0] == 0
    assert sorted(p.name for p in full.iterdir()) == ["grid_w0.png", "samples.npz"]  # old files gone, no lock
    with np.load(full / "samples.npz") as z:
        assert len(z["x"]) == 1
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / ".guidediff.lock").write_text(f"{os.getppid()}\n")  # a live process
    code, err = run_case(sample_argv(world, busy, "--overwrite"), capsys)
    assert code == 2 and "another guidediff process" in err and sorted(os.listdir(busy)) == [".guidediff.lock"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (busy / ".guidediff.lock").write_text(f"{dead.pid}\n")  # a stale lock from a killed run
    assert run_case(sample_argv(world, busy), capsys)[0] == 0
    assert (busy / "samples.npz").is_file() and not (busy / ".guidediff.lock").exists()


def test_overwrite_replaces_an_existing_output_file(tmp_path, capsys):
    full = _full_out(tmp_path)
    assert run_case(["report", str(full)], capsys)[0] == 2
    assert run_case(["report", str(full), "--overwrite"], capsys)[0] == 0
    assert "guidediff report" in (full / "report.html").read_text()


def test_overwrite_never_empties_the_working_directory(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(_full_out(tmp_path))
    code, err = run_case(sample_argv(world, ".", "--overwrite"), capsys)
    assert code == 2 and "working directory" in err and (Path.cwd() / "samples.npz").read_bytes() == b"forty earlier samples"


def test_non_finite_samples_stop_with_the_model_named(world):
    from guidediff.loading import load_model
    from guidediff.generation import generate

    net, config = load_model(world["model"])
    net.forward = lambda z, lam, c: torch.full_like(z, float("inf"))  # finite weights, overflowing output
    with pytest.raises(UsageError, match="model.safetensors produced non-finite values"):
        generate(net, config, [0], [1.0], 1, steps=1, device="cpu", progress=False)


def test_sweep_resume_keeps_finished_points_and_refuses_other_settings(world, tmp_path, capsys, monkeypatch):
    import json

    from guidediff import generation
    from guidediff.metrics import evaluate
    from guidediff.sweep import SweepSettings, run_sweep

    sampled = []

    def fake_generate(net, config, classes, ws, n, **_):  # the sweep's bookkeeping is under test, not sampling
        sampled.extend(ws)
        y = np.repeat(np.asarray(classes), n)
        return {"x": np.zeros((len(y), 28, 28, 1), np.uint8), "y": y, "w": np.full(len(y), ws[0], np.float32),
                "seconds": 1.0, "nfe_per_image": 2.0}

    def fake_evaluate(images, labels, **_):
        return {"n": len(images), "fid": 10.0 + len(sampled), "fid_floor": 3.0, "kid": {"mean": 0.0, "std": 0.0},
                "is": 1.0, "cas": {"overall": 0.1, "per_class": {}}, "precision": 0.5, "recall": 0.5}

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(evaluate, "evaluate_samples", fake_evaluate)
    out = tmp_path / "sweep"
    settings = SweepSettings(n=10, steps=2, out_dir=out, device="cpu")
    run_sweep(str(world["model"]), [0.0], settings)  # a sweep that stopped after its first w
    assert sampled == [0.0]
    code, err = run_case(["sweep", str(world["model"]), "--w", "0,1", "--n", "10", "--steps", "2", "--out", str(out),
                          *M], capsys)
    assert code == 2 and "--resume" in err and sampled == [0.0]
    summary = run_sweep(str(world["model"]), [0.0, 1.0], settings, resume=True)
    assert sampled == [0.0, 1.0]  # only the missing w was sampled
    assert [(p["w"], p["fid"]) for p in summary["points"]] == [(0.0, 11.0), (1.0, 12.0)]
    assert json.loads((out / "sweep.json").read_text())["points"] == summary["points"]
    assert (out / "grid_across_w.png").is_file()
    with pytest.raises(UsageError, match="steps 2 -> 3"):
        run_sweep(str(world["model"]), [0.0, 1.0], settings, resume=True, steps=3)
    with pytest.raises(UsageError, match="run_sweep has no setting stpes; its settings are n, steps"):
        run_sweep(str(world["model"]), [0.0], settings, stpes=3)
    with pytest.raises(UsageError, match="run_sweep needs out_dir"):
        run_sweep(str(world["model"]), [0.0], n=10, steps=2)


def test_killed_export_leaves_no_half_written_file_for_good(world, tmp_path):
    from guidediff.checkpoint import save_model
    from guidediff.sources import load_weights

    tensors, config, _ = load_weights(world["model"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.safetensors.tmp-{dead.pid}"
    stale.write_bytes(b"half a model")
    save_model(tensors, config, tmp_path / "model.safetensors")
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


# -- what reaches a terminal -----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["sample", "{case}/nope", "--out", "{new}"],
    ["sweep", "{ddgan}", "--out", "{new}", "--device", "foo"],
    ["report", "{bad_sweep}", "--out", "{case}/r.html"],
], ids=["sample-missing", "sweep-device", "report-json"])
def test_no_traceback_reaches_the_terminal(argv, world, tmp_path):
    args, _ = _expand(argv, world, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "guidediff", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
