"""The ``step1x-edit data`` commands end to end."""

import json

from step1x_edit.cli import main


def test_generate_inspect_export_import_round_trip(tmp_path, capsys):
    store = tmp_path / "store"
    assert (
        main(
            [
                "data",
                "generate",
                "--tasks",
                "all",
                "--count",
                "22",
                "--out",
                str(store),
                "--resolution",
                "64-96",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["data", "inspect", str(store), "--json", "--samples", "4"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["total"] == 22 and len(summary["per_task"]) == 11
    assert (store / "contact_sheet.png").is_file()
    assert (
        main(
            [
                "data",
                "export",
                str(store),
                "--format",
                "official-json",
                "--out",
                str(tmp_path / "official"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "export",
                str(store),
                "--format",
                "webdataset",
                "--out",
                str(tmp_path / "wds"),
                "--quiet",
            ]
        )
        == 0
    )
    assert list((tmp_path / "wds").glob("*.tar"))
    assert (
        main(
            [
                "data",
                "import",
                str(tmp_path / "official" / "metadata.json"),
                "--format",
                "official-json",
                "--out",
                str(tmp_path / "imported"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(["data", "filter", str(store), "--out", str(tmp_path / "filtered"), "--workers", "1", "--quiet"])
        == 0
    )
    assert "22 samples, 0 rejected" in capsys.readouterr().out


def test_bad_task_name_is_reported_without_traceback(tmp_path, capsys):
    assert (
        main(["data", "generate", "--tasks", "teleport", "--count", "2", "--out", str(tmp_path / "x")]) == 2
    )
    assert "unknown task" in capsys.readouterr().err


def test_examples_writes_source_images_with_instructions(tmp_path):
    assert main(["data", "examples", "--out", str(tmp_path / "ex"), "--resolution", "128"]) == 0
    entries = json.loads((tmp_path / "ex" / "examples.json").read_text())
    assert len(entries) == 4 and all(entry["instruction_en"] and entry["instruction_zh"] for entry in entries)
