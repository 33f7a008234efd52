"""The command line: every subcommand's help renders, list parsing gives one-line errors."""

from __future__ import annotations

import pytest

from guidediff.cli import build_parser, main
from guidediff.errors import UsageError
from guidediff.parsing import parse_classes, parse_floats


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help_renders(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert "sample" in capsys.readouterr().out


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_renders(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_parse_floats():
    assert parse_floats("0, 0.5,3", "--w") == [0.0, 0.5, 3.0]
    for bad in ("nan", "1,inf", "x", ""):
        with pytest.raises(UsageError):
            parse_floats(bad, "--w")


def test_parse_classes():
    assert parse_classes("0-3,2", 10) == [0, 1, 2, 3]
    assert parse_classes("all", 3) == [0, 1, 2]
    for bad in ("12", "5-3", "a", "-1"):
        with pytest.raises(UsageError):
            parse_classes(bad, 10)
