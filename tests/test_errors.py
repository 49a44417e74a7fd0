"""User-facing errors: every MedclError is one line on stderr and exit status 1; ``--debug`` raises it."""

from __future__ import annotations

import pytest

from medcl.cli import main
from medcl.commands import config as config_command
from medcl.errors import ConfigError, DataError, MedclError


def _raising(exc: Exception):
    def command(args) -> int:
        raise exc

    return command


@pytest.mark.parametrize("cls", [MedclError, ConfigError, DataError])
def test_cli_prints_one_line_and_exits_1(cls: type[MedclError], monkeypatch, capsys) -> None:
    message = f"splits file s.json: 2 id(s) of 'val' are not in dataset d ({cls.__name__})"
    monkeypatch.setattr(config_command, "_list", _raising(cls(message)))
    assert main(["config", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"medcl: error: {message}\n"  # no traceback, no class name
    assert captured.out == ""


@pytest.mark.parametrize("cls", [MedclError, ConfigError, DataError])
def test_debug_shows_the_exception_itself(cls: type[MedclError], monkeypatch, capsys) -> None:
    monkeypatch.setattr(config_command, "_list", _raising(cls("bad key")))
    with pytest.raises(cls, match="bad key"):
        main(["config", "list", "--debug"])  # --debug is accepted after the command too
    assert "medcl: error" not in capsys.readouterr().err


def test_a_bug_is_not_dressed_up_as_a_user_error(monkeypatch) -> None:
    """Only MedclError is the user's fault: anything else keeps its traceback."""
    monkeypatch.setattr(config_command, "_list", _raising(ValueError("internal")))
    with pytest.raises(ValueError, match="internal"):
        main(["config", "list"])


def test_the_subclasses_are_medcl_errors() -> None:
    assert issubclass(ConfigError, MedclError) and issubclass(DataError, MedclError)
    assert not issubclass(ConfigError, DataError) and not issubclass(DataError, ConfigError)


def test_a_real_config_error_from_the_command_line(capsys) -> None:
    assert main(["config", "show", "no/such/config"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medcl: error: config file not found: no/such/config (and no shipped config named")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_one_line_joins_the_lines_of_a_message() -> None:
    from medcl.errors import one_line

    assert one_line("bad case:\n  label values [7]\n") == "bad case:; label values [7]"
    assert one_line(ValueError("a\nb")) == "a; b"
