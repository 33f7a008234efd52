"""`guidediff report RUN_DIR`: one self-contained HTML page for a run."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a run or sweep directory")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report file (it is refused otherwise)")
    p.add_argument("--data-dir", default=None,
                   help="a DDGAN run's dataset folder for its discriminator check (default: where the run found it)")
    p.set_defaults(func=run)


def run(args) -> int:
    from guidediff.commands._outputs import check_out_file
    from guidediff.commands._run_dir import existing_dir
    from guidediff.report import write_report

    run_dir = existing_dir(args.run_dir, "the run, sweep or eval output directory")
    if args.data_dir is not None:  # named on purpose: a wrong one is an error, not a note inside the page
        existing_dir(args.data_dir, "the folder that holds the run's dataset")
    check_out_file(args.out or run_dir / "report.html", flag="--out", suffix=".html", overwrite=args.overwrite)
    path = write_report(run_dir, args.out, data_dir=args.data_dir)
    print(f"wrote {path}")
    return 0
