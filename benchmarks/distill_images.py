"""Guidance distillation on Fashion-MNIST (Meng et al. 2023, stage one): a w-conditioned student,
started from the shipped CFG model's weights, learns the teacher's guided prediction
ε̃_w = (1+w)·ε(z,c) − w·ε(z,∅) for w ∈ [0, 4]; then it is swept like any model, at ONE forward per
sampling step. Writes <out>/sweep_fmnist_distilled.json in the sweep.json format (for
compare_sweeps.py), the student's held-out error against the teacher, and the student weights.

    python benchmarks/distill_images.py --minutes 4 --w 0.3,1,2 --n 10000 --out OUT
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from guidediff.loading import load_model  # noqa: E402
from guidediff.data.fmnist import load_fmnist  # noqa: E402
from guidediff.diffusion import q_sample  # noqa: E402
from guidediff.distill import distill_model, guided_teacher  # noqa: E402
from guidediff.metrics.evaluate import evaluate_samples  # noqa: E402
from guidediff.nets.w_conditioned import WConditionedUNet  # noqa: E402
from guidediff.generation import generate  # noqa: E402
from guidediff.precondition import wrap_for_config  # noqa: E402
from guidediff.schedules import schedule_from_config  # noqa: E402
from guidediff.sweep import flatten_metrics  # noqa: E402


def held_out_error(student, teacher, x, c, lam_of_u, null_class: int, w_values: list[float], seed: int) -> dict:
    """Relative squared error ‖ε̂_student − ε̃_w‖² / ‖ε̃_w‖² on test images, per w."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    lam = lam_of_u(torch.rand(len(x), device=x.device, generator=g))
    z = q_sample(x, lam, torch.randn(x.shape, device=x.device, generator=g))
    target_of = guided_teacher(teacher, null_class)
    out = {}
    with torch.no_grad():
        for w in w_values:
            wt = torch.full_like(lam, w)
            target = target_of(z, lam, c, wt)
            out[f"{w:g}"] = float((student(z, lam, c, wt).float() - target).pow(2).sum() / target.pow(2).sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-cfg")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--w", default="0.3,1,2")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--held-out", type=int, default=2000, help="test images for the student-vs-teacher error")
    p.add_argument("--out", default="runs/distill")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    out = common.claim_result("sweep_fmnist_distilled", args.out).parent  # before any work
    began = common.sharing_began(device)
    teacher_net, config = load_model(args.model, device)
    null = config.model.num_classes
    d = config.diffusion
    lam_of_u = schedule_from_config(d).lam
    # teacher and student are compared as the denoisers they sample as (EDM-preconditioned where the config says)
    teacher_eps = wrap_for_config(teacher_net, d)

    def teacher(z, lam, c):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return teacher_eps(z, lam, c).float()

    test_images, test_labels = load_fmnist("test")
    xt = torch.from_numpy(test_images[:args.held_out].copy()).to(device).float().div(127.5).sub(1).unsqueeze(1)
    yt = torch.from_numpy(test_labels[:args.held_out].copy()).to(device).long()
    ws = [float(v) for v in args.w.split(",")]
    check_ws = sorted({0.0, *ws, 4.0})
    # before training the student is the teacher's conditional prediction: the error to beat
    start_student = wrap_for_config(WConditionedUNet.from_teacher(teacher_net).to(device).eval(), d)
    error_at_start = held_out_error(start_student, teacher, xt, yt, lam_of_u, null, check_ws, seed=1)
    images, labels = load_fmnist("train")
    t0 = time.perf_counter()
    student, losses = distill_model(teacher_net, config, torch.from_numpy(images[..., None].copy()),
                                    torch.from_numpy(labels.copy()), steps=10**9, seconds=args.minutes * 60,
                                    batch=args.batch, lr=args.lr)
    train_s = time.perf_counter() - t0
    print(f"distilled {len(losses)} steps in {train_s:.0f} s; loss first 100 {sum(losses[:100]) / 100:.4f}, "
          f"last 100 {sum(losses[-100:]) / 100:.4f}", flush=True)
    error = held_out_error(wrap_for_config(student, d), teacher, xt, yt, lam_of_u, null, check_ws, seed=1)
    print("held-out relative error vs teacher's guided eps, at start:", error_at_start, "after:", error, flush=True)
    summary = {"model": f"distilled student of {args.model}", "n_per_w": args.n - args.n % 10,
               "steps": args.steps, "sampler": "ddim", "seed": 0, "guidance": "cfg", "knob": "w",
               "cfg_variant": {"name": "distilled"}, "distill": {"train_steps": len(losses), "train_seconds": train_s,
                                                                 "batch": args.batch, "lr": args.lr, "w_range": [0, 4],
                                                                 "loss_first_100": sum(losses[:100]) / 100,
                                                                 "loss_last_100": sum(losses[-100:]) / 100,
                                                                 "held_out_relative_error": error,
                                                                 "held_out_relative_error_at_start": error_at_start,
                                                                 "held_out_images": len(xt)},
               "fid_floor": None, "points": []}
    for w in ws:
        # generate hands w to the student: one forward per step
        res = generate(student, config, list(range(10)), [w], args.n // 10, steps=args.steps, seed=0,
                       device=device, batch_size=1000, progress=False)
        m = flatten_metrics(evaluate_samples(res["x"], res["y"], device=device))
        point = {"w": w, **m, "sec_per_image": res["seconds"] / len(res["x"]), "nfe_per_image": res["nfe_per_image"]}
        summary["points"].append(point)
        summary["fid_floor"] = m["fid_floor"]
        summary["gpu_sharing"] = common.sharing_record(began, device)
        print(f"w={w:g} FID-FMNIST {m['fid']:.3f} IS {m['is']:.2f} CAS {m['cas']:.3f} P {m['precision']:.3f} "
              f"R {m['recall']:.3f} {1e3 * point['sec_per_image']:.2f} ms/image, NFE {point['nfe_per_image']:.0f}",
              flush=True)
        common.write_result("sweep_fmnist_distilled", summary, str(out))
    from safetensors.torch import save_file

    save_file({k: v.detach().half().contiguous() for k, v in student.state_dict().items()},
              str(out / "distilled_student.safetensors"))


if __name__ == "__main__":
    main()
