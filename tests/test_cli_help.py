"""The command line reads at a glance: help with defaults and examples on every command and
flag, ``--version``, ``estimate`` in the chosen convention, and output piped into ``head``
that ends quietly."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from stagetune import __version__
from stagetune.cli import main
from stagetune.cli_parser import build_parser

COMMANDS = ("run", "sweep", "train", "estimate", "report", "ui")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_has_examples_and_no_doc_markup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "examples:" in out
    for cmd in COMMANDS:
        assert f"stagetune {cmd}" in out


def test_every_flag_has_help_and_every_command_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    subs = _subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, (name, action.option_strings)
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"stagetune {name} " in out, name
    text = " ".join(sub.format_help().replace("\n", " ") for sub in subs.values())
    text = " ".join(text.split())
    for shown in ("(default: 8)", "(default: 1)", "(default: stagetune-work)",
                  "(default: 5000)", "(default: wide)", "(default: standard)"):  # fmt: skip
        assert shown in text, shown


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"stagetune {__version__}"


@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_estimate_prints_the_plan_in_the_matching_convention(
    convention: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", "--stages", "3", "--convention", convention]) == 0
    out = capsys.readouterr().out
    assert f"matched in the {convention} FLOPs convention" in out
    header = next(line for line in out.splitlines() if "% of baseline" in line)
    assert "tokens" in header and "FLOPs" in header
    total = next(line for line in out.splitlines() if line.lstrip().startswith("total"))
    assert "%" in total and "FLOPs" in total and "e+" not in out
    other = "paper" if convention == "standard" else "standard"
    assert f"in the {other} convention the same schedule costs" in out
    assert out.count("stage  phase") == 1  # one plan, not one per convention


def test_output_into_a_closed_pipe_exits_quietly() -> None:
    """``estimate --json | head``: the reader may be gone before the JSON is written (``true``
    never reads: it always is)."""
    proc = subprocess.run(
        f"{sys.executable} -m stagetune.cli estimate --json | true; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.stderr == "" and proc.stdout.strip() == "141"  # as if SIGPIPE had ended it
