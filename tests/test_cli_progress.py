"""Progress bars and messages: a warning or a log record printed while a command's progress bar is drawn gets a
line of its own (the bar is redrawn below it), never the end of the bar's line."""

import logging
import re
import sys
import warnings

from tqdm import tqdm

from step1x_edit import cli


def _command_with_a_bar(args) -> int:
    with tqdm(total=2, file=sys.stderr, mininterval=0) as bar:
        bar.update(1)
        warnings.warn("the first half was slow", stacklevel=1)
        logging.getLogger("step1x_edit.example").warning("one shard was rebuilt")
        bar.update(1)
    print("done")
    return 0


def test_a_warning_or_log_record_during_a_progress_bar_gets_its_own_line(monkeypatch, capsys, printed_warnings):
    monkeypatch.setattr(cli, "_info", _command_with_a_bar)
    assert cli.main(["info", "any-model"]) == 0
    captured = capsys.readouterr()
    shown = re.split(r"[\r\n]", captured.err)  # what a terminal starts a line, or a redrawn line, with
    assert "step1x-edit info: warning: the first half was slow" in shown
    assert "one shard was rebuilt" in shown
    assert captured.out == "done\n"


def test_with_debug_a_warning_keeps_its_source_location_on_its_own_line(monkeypatch, capsys, printed_warnings):
    monkeypatch.setattr(cli, "_info", _command_with_a_bar)
    assert cli.main(["info", "any-model", "--debug"]) == 0
    shown = re.split(r"[\r\n]", capsys.readouterr().err)
    assert any(line.startswith(__file__) and line.endswith("UserWarning: the first half was slow") for line in shown)
