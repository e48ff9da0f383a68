"""The command line's last line of defence: any failure is one line and a non-zero exit, its traceback only with
--debug; warnings are one line too."""

import warnings

import pytest

from step1x_edit import cli


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


def test_warnings_are_one_line_without_source_lines(monkeypatch, capsys, printed_warnings):
    monkeypatch.setattr(cli, "_info", _warning_info)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["info", "anywhere"]) == 0
    assert capsys.readouterr().err == ("step1x-edit info: warning: the newest checkpoint is damaged; resuming from "
                                       "the one before\n")
