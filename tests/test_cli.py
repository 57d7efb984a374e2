"""`mincore --help / --version / info / bench kernels` through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import mincore
from mincore.cli.main import COMMANDS, main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_help_lists_commands_with_examples():
    r = run("--help")
    assert r.exit_code == 0, r.output
    for cmd in ("info", "bench"):
        assert cmd in r.output
    assert "Examples" in r.output


def test_every_registered_command_loads_under_its_name():
    ctx = click.Context(main)
    assert set(COMMANDS) <= set(main.list_commands(ctx))
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name


@pytest.mark.parametrize("module", ["bench", "train", "generate", "rl", "options"])
def test_command_modules_do_not_import_the_group(module):
    """A command module defines plain click commands; the group registers them (no import cycle)."""
    code = f"import sys, mincore.cli.{module}; print('mincore.cli.main' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and mincore.__version__ in r.output


def test_info_names_every_engine_and_why_not():
    r = run("info")
    assert r.exit_code == 0, r.output
    for name, e in mincore.engines().items():
        assert name in r.output
        if not e["available"]:
            assert e["reason"] in r.output


@pytest.mark.parametrize("cmd", [["info"], ["bench", "kernels"]])
def test_every_command_has_an_example(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "Example" in r.output and "mincore " + cmd[0] in r.output


@pytest.mark.parametrize("cmd", [["train"], ["eval"], ["generate"], ["rl", "collect"], ["rl", "info"],
                                 ["bench", "kernels"]])
def test_every_command_help_lists_its_checked_options(cmd):
    """--help of each command builds (its options, checks included) and says what the checks take."""
    r = run(*cmd, "--help")
    assert r.exit_code == 0, r.output
    said = {"train": ["--force", "--seed INTEGER RANGE", "at most the CPUs"], "eval": ["--data FILE"],
            "generate": ["--temperature FINITE FLOAT", "--seed INTEGER RANGE"], "collect": ["--seed INTEGER RANGE"]}
    for words in said.get(cmd[-1], []):
        assert words in " ".join(r.output.split()), words


def test_bench_kernels_quick_writes_rows(tmp_path):
    path = tmp_path / "rows.json"
    r = run("bench", "kernels", "--quick", "--no-torch", "--engine", "numba", "--shape", "2,33,16",
            "--json", str(path))
    assert r.exit_code == 0, r.output
    rows = json.loads(path.read_text())
    assert {row["pass"] for row in rows} == {"fwd", "bwd", "fwd+bwd"}
    for row in rows:
        assert row["engine"] in ("numba", "numba (out=)") and row["GB/s"] > 0 and row["copy GB/s"] > 0
    assert {row["engine"] for row in rows} == {"numba", "numba (out=)"}  # API call, and kernel alone
    assert "| numba | (2, 33, 16) | float32 | fwd |" in r.output


@pytest.mark.parametrize("args, words", [
    (["bench", "kernels", "--engine", "nope"], "unknown engine 'nope'"),
    (["bench", "kernels", "--shape", "1,2"], "expected B,T,D"),
    (["bench", "kernels", "--shape", "0,2,3"], ">= 1"),
    (["info", "--bogus"], "No such option"),
])
def test_bad_arguments_give_one_line_errors(args, words):
    r = run(*args)
    assert r.exit_code != 0
    assert words in r.output
    assert "Traceback" not in r.output
