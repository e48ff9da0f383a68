"""Every ``bench`` command prints its help."""

import pytest

from step1x_edit.cli import main


@pytest.mark.parametrize("command", [[], ["generate"], ["judge"], ["stats"], ["import-official"], ["report"],
                                     ["pairwise"]])
def test_bench_help_is_printed(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: step1x-edit bench" in capsys.readouterr().out
