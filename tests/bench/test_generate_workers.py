"""``bench generate --processes N`` starts one worker per shard, each pinned to its own GPU."""

import pytest

from step1x_edit.cli import main


class FakeWorker:
    started = []

    def __init__(self, argv, env):
        self.argv, self.env = argv, env
        FakeWorker.started.append(self)

    def wait(self):
        return 3 if self.argv[-1] == "1/3" and self.env.get("FAIL") else 0


@pytest.fixture
def workers(monkeypatch):
    import subprocess

    FakeWorker.started = []
    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    return FakeWorker.started


def test_each_worker_gets_one_shard_and_one_gpu(workers, tmp_path):
    argv = ["bench", "generate", "--bench", str(tmp_path), "--out", str(tmp_path / "r"), "--model", "/m/v1.1",
            "--lang", "en", "--tasks", "color_alter", "subject-add", "--negative-prompt=-blurry", "--processes", "3"]
    assert main(argv) == 0
    assert [w.argv[-2:] for w in workers] == [["--shard", "0/3"], ["--shard", "1/3"], ["--shard", "2/3"]]
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["2", "5", "7"]
    command = workers[0].argv
    assert command[1:5] == ["-m", "step1x_edit.cli", "bench", "generate"]
    assert "--model=/m/v1.1" in command and "--negative-prompt=-blurry" in command
    assert command[command.index("--tasks") + 1 : command.index("--tasks") + 3] == ["color_alter", "subject-add"]
    assert "--name=v1.1" not in command  # each worker derives the same default name


def test_a_failed_worker_is_reported(workers, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAIL", "1")
    argv = ["bench", "generate", "--bench", str(tmp_path), "--out", str(tmp_path / "r"), "--processes", "3"]
    assert main(argv) == 2
    assert "shard(s) [1] of 3 failed; rerun to resume" in capsys.readouterr().err


@pytest.mark.parametrize("shard", ["3/3", "-1/3", "1/0", "²/3", "1/3/4", "a/b", "1/1000000"])
def test_bad_shard_is_refused(shard, tmp_path, capsys):
    argv = ["bench", "generate", "--bench", str(tmp_path), "--out", str(tmp_path / "r"), f"--shard={shard}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --shard: must be I/N with 0 <= I < N <= 100000" in err and "Traceback" not in err
