"""The command line shell: version, help, unknown commands."""
import subprocess
import sys

import pytest

import grunet
from grunet.cli import build_parser, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"grunet {grunet.__version__}"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "params" in capsys.readouterr().out


def test_no_command_and_unknown_command_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "grunet", "params", "--reset-before", "--dense", "10"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "24,160" in r.stdout


def test_parser_has_params():
    assert "params" in build_parser()._subparsers._group_actions[0].choices
