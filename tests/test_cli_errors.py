"""The command line's last line of defence: any failure is one line and a non-zero exit, its traceback only with
--debug; warnings are one line too."""

import sys
import warnings

import pytest

from step1x_edit import cli


def warnings_module_display(message) -> None:
    """Python's default display of a warning (``warnings._showwarnmsg_impl``), written to stderr."""
    sys.stderr.write(warnings.formatwarning(message.message, message.category, message.filename, message.lineno,
                                            message.line))


warnings_module_display.__module__ = "warnings"


def _failing_info(args):
    raise RuntimeError("something nobody foresaw\nwith a second line")


def _warning_info(args):
    warnings.warn("the newest checkpoint is damaged; resuming from the one before", stacklevel=1)
    return 0


def test_an_unforeseen_failure_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_info", _failing_info)
    assert cli.main(["info", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert err == ("step1x-edit info: error: RuntimeError: something nobody foresaw with a second line (run again "
                   "with --debug for the traceback)\n")


def test_debug_shows_the_traceback_after_the_command(monkeypatch):
    monkeypatch.setattr(cli, "_info", _failing_info)
    with pytest.raises(RuntimeError, match="nobody foresaw"):
        cli.main(["info", "anywhere", "--debug"])


def test_a_users_error_is_one_line_and_exit_2(capsys, tmp_path):
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("step1x-edit info: error:") and "Traceback" not in err


def test_warnings_are_one_line_without_source_lines(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_info", _warning_info)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Python's own display, as outside pytest (which records warnings instead).
        monkeypatch.setattr(warnings, "showwarning", warnings._showwarning_orig)
        monkeypatch.setattr(warnings, "_showwarnmsg_impl", warnings_module_display)
        assert cli.main(["info", "anywhere"]) == 0
    assert capsys.readouterr().err == ("step1x-edit info: warning: the newest checkpoint is damaged; resuming from "
                                       "the one before\n")
