"""The `guidediff` command: a thin dispatcher over guidediff.commands.

Each module in guidediff.commands defines ``add_parser(subparsers)`` (which registers one
subcommand and sets ``func``) and keeps its heavy imports inside the function it runs, so that
``guidediff --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from guidediff.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    import guidediff.commands as commands

    parser = argparse.ArgumentParser(
        prog="guidediff",
        description="Train, sample and evaluate guided diffusion models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"guidediff.commands.{info.name}")
        module.add_parser(subparsers)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    from guidediff.commands._outputs import release_outputs

    parser = build_parser()
    args = parser.parse_args(argv)
    failed = True
    try:
        result = args.func(args)
        failed = False
    except UsageError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    except OSError as exc:
        # the machine, not the input: a full disk, a folder removed under the run, a lost mount
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or _one_line(exc)}{where}; check that the path exists, is writable and "
              "has free space, then rerun", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - only CUDA OOM is translated, the rest re-raised
        if type(exc).__name__ == "OutOfMemoryError":
            print(
                "error: the GPU ran out of memory; lower the batch size (e.g. --batch-size or "
                "--set train.batch_size=64) or use a smaller model",
                file=sys.stderr,
            )
            return 3
        raise
    finally:
        release_outputs(failed)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
