"""`guidediff report RUN_DIR`: one self-contained HTML page for a run."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a run or sweep directory")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.set_defaults(func=run)


def run(args) -> int:
    from guidediff.report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
