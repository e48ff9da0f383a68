"""The ``step1x-edit data`` commands end to end."""

import json

import pytest

from step1x_edit.cli import main


def run(*args) -> int:
    return main(["data", *map(str, args)])


def test_generate_inspect_export_import_filter_round_trip(tmp_path, capsys):
    store = tmp_path / "store"
    assert (
        run(
            "generate",
            "--tasks",
            "all",
            "--count",
            22,
            "--out",
            store,
            "--resolution",
            "64-96",
            "--workers",
            1,
            "--quiet",
        )
        == 0
    )
    assert run("inspect", store, "--json", "--samples", 4) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["total"] == 22 and len(summary["per_task"]) == 11
    assert (store / "contact_sheet.png").is_file()

    official = tmp_path / "official"
    assert (
        run("export", store, "--format", "official-json", "--out", official, "--relative-paths", "--quiet")
        == 0
    )
    target, entry = next(iter(json.loads((official / "metadata.json").read_text()).items()))
    assert target.startswith("images/") and entry["ref_image_path"].startswith("images/")
    assert (
        run(
            "import",
            official / "metadata.json",
            "--format",
            "official-json",
            "--out",
            tmp_path / "imported",
            "--quiet",
        )
        == 0
    )

    assert run("export", store, "--format", "webdataset", "--out", tmp_path / "wds", "--quiet") == 0
    assert list((tmp_path / "wds").glob("*.tar"))
    validation = tmp_path / "validation"
    assert (
        run(
            "export",
            store,
            "--format",
            "official-json",
            "--out",
            validation,
            "--split",
            "validation",
            "--validation-fraction",
            0.5,
            "--quiet",
        )
        == 0
    )
    assert 0 < len(json.loads((validation / "metadata.json").read_text())) < 22

    assert run("filter", store, "--out", tmp_path / "filtered", "--workers", 1, "--quiet") == 0
    output = capsys.readouterr().out
    assert "imported 22 samples" in output and "22 samples, 0 rejected" in output


def test_bad_task_name_is_reported_without_traceback(tmp_path, capsys):
    assert run("generate", "--tasks", "teleport", "--count", 2, "--out", tmp_path / "x") == 2
    assert "unknown task" in capsys.readouterr().err


def test_examples_writes_source_images_with_instructions(tmp_path):
    assert run("examples", "--out", tmp_path / "ex", "--resolution", 128) == 0
    entries = json.loads((tmp_path / "ex" / "examples.json").read_text())
    assert len(entries) == 4 and all(entry["instruction_en"] and entry["instruction_zh"] for entry in entries)


def test_every_data_command_has_working_help(capsys):
    for command in ("generate", "annotate", "filter", "inspect", "export", "import", "examples"):
        with pytest.raises(SystemExit) as exit_info:
            run(command, "--help")
        assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
