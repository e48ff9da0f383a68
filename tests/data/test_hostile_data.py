"""Hostile and damaged input to the data engine: corrupt, truncated or missing shards and markers, killed parents,
JSON of the wrong types, output paths that are files, and out-of-range numbers on every data flag."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from step1x_edit.cli import main
from step1x_edit.data import (
    LocalExecutor,
    Store,
    SyntheticConfig,
    generate_dataset,
    import_official_json,
    iter_samples,
)
from step1x_edit.data.store import contact_sheet
from step1x_edit.errors import DataFormatError, InvalidValueError

GENERATE = ["generate", "--count", 33, "--shard-size", 11, "--resolution", "64", "--workers", 1, "--quiet"]


def run(*args) -> int:
    return main(["data", *map(str, args)])


def refused(capsys, *args) -> str:
    """Run ``step1x-edit data ARGS``, check it exits 2 without a traceback, and return its last stderr line."""
    try:
        code = run(*args)
    except SystemExit as exit_info:  # argparse refuses a flag before any command runs
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def samples(store_dir) -> list[tuple[str, str]]:
    return [(r["sample_id"], r["content_hash"]) for r in Store(store_dir).iter_records(["sample_id", "content_hash"])]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A store of 33 samples in 3 shards, and its samples; tests damage copies of it."""
    out = tmp_path_factory.mktemp("made") / "store"
    assert run(*GENERATE, "--out", out) == 0
    return out, samples(out)


@pytest.fixture
def store(made, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(made[0], copy)
    return copy


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the size stays the same
    path.write_bytes(bytes(data))


# -- damaged shards are rebuilt by a rerun, exactly once ----------------------------------------------------
@pytest.mark.parametrize(
    "damage, reason",
    [
        (_flip_a_byte, "does not match the sha256"),
        (lambda path: path.write_bytes(path.read_bytes()[:-100]), "truncated"),
        (lambda path: path.unlink(), "Parquet file is missing"),
    ],
    ids=["corrupted", "truncated", "deleted"],
)
def test_rerun_rebuilds_a_damaged_shard_exactly_once_and_says_so(store, made, damage, reason, caplog, capsys):
    damage(store / "shards" / "part-00001.parquet")
    with caplog.at_level(logging.WARNING):
        assert run(*GENERATE, "--out", store) == 0
    assert any("rebuilding shard part-00001" in m and reason in m for m in caplog.messages), caplog.messages
    assert samples(store) == made[1]  # every sample once, as a clean run made them
    assert run("inspect", store, "--json") == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["total"] == 33


@pytest.mark.parametrize(
    "marker",
    [b"\xff\xfe garbage", b"", b"[]", b"null", b'{"shard": "part-00001"}', b'{"shard": "part-00001", "rows": "11"}'],
    ids=["binary", "empty", "list", "null", "no-fields", "rows-as-text"],
)
def test_garbage_marker_counts_as_not_done_and_the_shard_is_rebuilt(store, made, marker, caplog):
    (store / "shards" / ".part-00001.done.json").write_bytes(marker)
    with caplog.at_level(logging.WARNING):
        assert run(*GENERATE, "--out", store) == 0
    assert any("rebuilding shard part-00001" in m and "garbled" in m for m in caplog.messages)
    assert samples(store) == made[1]


def test_rerun_leaves_intact_shards_alone(store):
    before = {p.name: p.stat().st_mtime_ns for p in (store / "shards").iterdir()}
    assert run(*GENERATE, "--out", store) == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in (store / "shards").iterdir()}


# -- readers name missing or damaged shards instead of reading less -------------------------------------------
@pytest.mark.parametrize(
    "remove, reason",
    [
        ([".part-00001.done.json"], "part-00001: it has no completion marker"),
        ([".part-00001.done.json", "part-00001.parquet"], "part-00001: neither its Parquet file nor its completion"),
        (["part-00002.parquet"], "part-00002: its Parquet file is missing"),
    ],
    ids=["marker", "both-files", "parquet"],
)
@pytest.mark.parametrize(
    "command",
    [["inspect"], ["export", "--format", "official-json", "--quiet"], ["export", "--format", "webdataset", "--quiet"]],
    ids=["inspect", "export-json", "export-webdataset"],
)
def test_inspect_and_export_name_a_missing_shard(store, tmp_path, capsys, remove, reason, command):
    for name in remove:
        (store / "shards" / name).unlink()
    args = [command[0], store, *command[1:]] + (["--out", tmp_path / "out"] if command[0] == "export" else [])
    line = refused(capsys, *args)
    assert "incomplete or damaged, 1 of 3 shards cannot be read" in line and reason in line
    assert not (tmp_path / "out" / "metadata.json").exists() and not list(tmp_path.glob("out/*.tar"))


def test_inspect_names_a_corrupted_shard(store, capsys):
    _flip_a_byte(store / "shards" / "part-00000.parquet")
    line = refused(capsys, "inspect", store)
    assert "part-00000: its Parquet file does not match the sha256 in its completion marker" in line


def test_export_of_a_corrupted_shard_fails_without_a_half_written_tar(store, tmp_path, capsys):
    _flip_a_byte(store / "shards" / "part-00002.parquet")
    line = refused(capsys, "export", store, "--format", "webdataset", "--out", tmp_path / "wds", "--quiet")
    assert "part-00002.parquet" in line and "does not match the sha256" in line
    assert not list((tmp_path / "wds").glob("*.tar.tmp"))


def test_training_reader_names_a_shard_with_a_garbled_marker(store):
    (store / "shards" / ".part-00000.done.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="part-00000: its completion marker is unreadable or garbled"):
        next(iter_samples(store, split=None))


def test_garbled_store_manifest_is_a_clear_error_and_overwrite_starts_afresh(store, made, capsys):
    (store / "store.json").write_text("[1, 2]")
    assert "has format 'list'" in refused(capsys, "inspect", store)
    assert "pass --overwrite to start the store afresh" in refused(capsys, *GENERATE, "--out", store)
    assert run(*GENERATE, "--out", store, "--overwrite") == 0
    assert samples(store) == made[1]


# -- workers end with their parent ------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; it only waits to be reaped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, signal_number):
    command = [sys.executable, "-m", "step1x_edit.cli", "data", "generate", "--count", "5000", "--shard-size", "4"]
    command += ["--resolution", "256", "--workers", "2", "--quiet", "--out", str(tmp_path / "s")]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2 and parent.poll() is None:
            time.sleep(0.05)
            workers = _children(parent.pid)
        assert len(workers) == 2, "the run did not start two workers"
        os.kill(parent.pid, signal_number)
        parent.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(map(_running, workers)):
            time.sleep(0.05)
        assert not [pid for pid in workers if _running(pid)], "workers outlived their parent"
    finally:
        parent.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


# -- JSON of the wrong types in imported files -------------------------------------------------------------
def _pair_images(folder: Path) -> None:
    for sub in ("source", "target"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / sub / "a.png")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"ref_image_path": "source/a.png", "caption": None}, "'caption' must be a string, got null"),
        ({"ref_image_path": "source/a.png", "caption": 5}, "'caption' must be a string, got the number 5"),
        ({"ref_image_path": "source/a.png", "caption": ["red"]}, "'caption' must be a string, got a list"),
        ({"ref_image_path": 7, "caption": "make it red"}, "'ref_image_path' must be a string, got the number 7"),
        ({"ref_image_path": "source/a.png"}, "lacks 'caption'"),
        (["source/a.png", "make it red"], "must be an object with 'ref_image_path' and 'caption', got a list"),
        (None, "got null"),
    ],
    ids=["null-caption", "number-caption", "list-caption", "number-path", "no-caption", "list-entry", "null-entry"],
)
def test_official_json_with_wrong_types_names_the_entry_and_field(tmp_path, capsys, entry, message):
    _pair_images(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"target/a.png": entry}))
    line = refused(capsys, "import", tmp_path / "metadata.json", "--format", "official-json", "--out",
                   tmp_path / "out", "--quiet")
    assert "entry 'target/a.png'" in line and message in line
    assert not (tmp_path / "out" / "shards").is_dir() or not list((tmp_path / "out" / "shards").iterdir())


def test_official_json_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "metadata.json").write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="got a list"):
        import_official_json(tmp_path / "metadata.json", tmp_path / "out", progress=False)
    (tmp_path / "metadata.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        import_official_json(tmp_path / "metadata.json", tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    "line, message",
    [
        ({"name": "a", "instruction_en": None}, ":1: 'instruction_en' must be a string, got null"),
        ({"name": 3, "instruction_en": "x"}, ":1: 'name' must be a string, got the number 3"),
        ({"name": "a", "task": ["x"]}, ":1: 'task' must be a string, got a list"),
        (["a", "make it red"], ":1: expected a JSON object with 'name', got a list"),
        ({"instruction_en": "x"}, ":1: expected a JSON object with 'name', got an object"),
    ],
    ids=["null-instruction", "number-name", "list-task", "list-line", "no-name"],
)
def test_pair_folder_instructions_with_wrong_types_name_the_line_and_field(tmp_path, capsys, line, message):
    _pair_images(tmp_path / "pairs")
    (tmp_path / "pairs" / "instructions.jsonl").write_text(json.dumps(line) + "\n")
    err = refused(capsys, "import", tmp_path / "pairs", "--format", "pairs", "--out", tmp_path / "out", "--quiet")
    assert "instructions.jsonl" + message in err


def test_null_caption_is_refused_not_stored_as_the_text_none(tmp_path):
    _pair_images(tmp_path)
    entry = {"ref_image_path": "source/a.png", "caption": None}
    (tmp_path / "metadata.json").write_text(json.dumps({"target/a.png": entry}))
    with pytest.raises(DataFormatError, match="'caption' must be a string, got null"):
        import_official_json(tmp_path / "metadata.json", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "entry, message",
    [
        (["car.png"], "expected a JSON object, got a list"),
        ({"task": "color_alteration", "image": "car.png", "mask": "car.png", "color": ["red"]},
         "'color' must be a string, got a list"),
        ({"task": "color_alteration", "image": 5, "mask": "car.png", "color": "red"},
         "'image' must be a string, got the number 5"),
        ({"task": "text_modification", "image": "car.png", "box": [0, 0, "8", 8], "text": "OPEN"},
         "box must be [x0, y0, x1, y1]"),
        ({"task": "text_modification", "image": "car.png", "box": [8, 0, 2, 8], "text": "OPEN"},
         "with x0 < x1"),
        ({"task": "text_modification", "image": "car.png", "box": [0, 0, 8, 8], "text": None},
         "'text' must be a string, got null"),
        ({"task": ["color_alteration"]}, "task must be color_alteration or text_modification"),
    ],
    ids=["list-line", "list-color", "number-image", "text-in-box", "inverted-box", "null-text", "list-task"],
)
def test_region_spec_with_wrong_types_names_the_line_and_field(tmp_path, capsys, entry, message):
    Image.new("RGB", (16, 16)).save(tmp_path / "car.png")
    (tmp_path / "edits.jsonl").write_text(json.dumps(entry) + "\n")
    line = refused(capsys, "generate", "--regions", tmp_path / "edits.jsonl", "--out", tmp_path / "out", "--quiet")
    assert "edits.jsonl:1:" in line and message in line


# -- output paths that are files ------------------------------------------------------------------------
def test_output_path_that_is_a_file_is_a_clear_error(tmp_path, made, capsys):
    file = tmp_path / "taken.txt"
    file.write_text("keep me")
    assert f"output store {file} is a file, not a folder" in refused(capsys, *GENERATE, "--out", file)
    _pair_images(tmp_path / "pairs")
    line = refused(capsys, "import", tmp_path / "pairs", "--format", "pairs", "--out", file, "--quiet")
    assert f"output store {file} is a file, not a folder" in line
    for fmt in ("official-json", "webdataset"):
        line = refused(capsys, "export", made[0], "--format", fmt, "--out", file, "--quiet")
        assert f"output folder {file} is a file, not a folder" in line
    assert "is a file, not a folder" in refused(capsys, "examples", "--out", file)
    assert "cannot create output store" in refused(capsys, *GENERATE, "--out", file / "inside")
    assert "is a folder" in refused(capsys, "inspect", made[0], "--sheet", tmp_path)
    assert file.read_text() == "keep me"


# -- numbers on every data flag ----------------------------------------------------------------------------
BAD_NUMBERS = ["0", "-1", "nan", "inf", str(2**64), "4.5", "ten"]
FLAGS = [
    (["generate", "--out", "X"], "--count", ["0", "-1", str(2**64), "4.5", "nan"]),
    (["generate", "--count", "2", "--out", "X"], "--seed", ["-1", str(2**64), "4.5", "nan"]),
    (["generate", "--count", "2", "--out", "X"], "--shard-size", BAD_NUMBERS),
    (["generate", "--count", "2", "--out", "X"], "--workers", BAD_NUMBERS),
    (["generate", "--count", "2", "--out", "X"], "--resolution", ["0", "-1", "32", str(2**64), "nan", "256-128"]),
    (["generate", "--count", "2", "--out", "X"], "--aspect", ["0", "-1", "nan", "inf:1", "1:0", "1e9"]),
    (["annotate", "S", "--out", "X", "--endpoint", "http://127.0.0.1:9"], "--concurrency", BAD_NUMBERS),
    (["annotate", "S", "--out", "X", "--endpoint", "http://127.0.0.1:9"], "--timeout", ["0", "-1", "nan", "inf"]),
    (["annotate", "S", "--out", "X", "--endpoint", "http://127.0.0.1:9"], "--max-retries", ["-1", "nan", "4.5"]),
    (["annotate", "S", "--out", "X", "--endpoint", "http://127.0.0.1:9"], "--actors", BAD_NUMBERS),
    (["filter", "S", "--out", "X"], "--min-side", BAD_NUMBERS),
    (["filter", "S", "--out", "X"], "--max-outside-change", ["-1", "1.5", "nan", "inf"]),
    (["filter", "S", "--out", "X"], "--min-score", ["-1", "11", "nan"]),
    (["filter", "S", "--out", "X"], "--actors", BAD_NUMBERS),
    (["inspect", "S"], "--samples", BAD_NUMBERS),
    (["inspect", "S"], "--seed", ["-1", str(2**64), "nan"]),
    (["export", "S", "--format", "webdataset", "--out", "X"], "--samples-per-shard", BAD_NUMBERS),
    (["export", "S", "--format", "webdataset", "--out", "X"], "--validation-fraction", ["-0.1", "1.5", "nan"]),
    (["examples", "--out", "X"], "--resolution", ["0", "-1", "32", str(2**64), "nan"]),
]


@pytest.mark.parametrize("base, flag, values", FLAGS, ids=[f"{base[0]}{flag}" for base, flag, _ in FLAGS])
def test_out_of_range_number_on_a_data_flag_is_refused_in_one_line(capsys, monkeypatch, tmp_path, base, flag, values):
    monkeypatch.chdir(tmp_path)  # a value wrongly accepted writes its store here, not into the checkout
    for value in values:
        line = refused(capsys, *base, f"{flag}={value}")
        assert f"argument {flag}: must be" in line, (value, line)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda tmp: SyntheticConfig(seed=-1), "seed must be an integer between 0"),
        (lambda tmp: SyntheticConfig(shard_size=0), "shard_size must be an integer between 1"),
        (lambda tmp: SyntheticConfig(resolution=(64, 2**40)), "resolution must be an integer between 64 and 4096"),
        (lambda tmp: SyntheticConfig(aspect_ratios=(float("nan"),)), "aspect ratio must be a finite number"),
        (lambda tmp: generate_dataset(tmp / "s", 0, progress=False), "count must be an integer between 1"),
        (lambda tmp: generate_dataset(tmp / "s", 2.5, progress=False), "count must be an integer"),
        (lambda tmp: LocalExecutor(0), "workers must be an integer between 1"),
        (lambda tmp: LocalExecutor(True), "workers must be an integer"),
    ],
    ids=["seed", "shard-size", "resolution", "aspect", "count", "fractional-count", "workers", "bool-workers"],
)
def test_out_of_range_settings_are_refused_by_the_api(tmp_path, call, message):
    with pytest.raises(InvalidValueError, match=message):
        call(tmp_path)


def test_contact_sheet_count_is_bounded(made, tmp_path):
    with pytest.raises(InvalidValueError, match="count must be an integer between 1 and 300"):
        contact_sheet(Store(made[0]), tmp_path / "sheet.png", count=0)
