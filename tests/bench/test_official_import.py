"""Official per-group score CSVs convert to a scores file with the same statistics."""

import csv
import json

import pytest

from step1x_edit.bench.official import read_official_csv
from step1x_edit.bench.stats import compute_statistics
from step1x_edit.cli import main
from step1x_edit.errors import DataFormatError


def write_official_csvs(records, folder):
    """Write ``records`` the way the upstream scorer does: one CSV per group and language, per-sample minima."""
    paths = []
    for (group, language) in sorted({(r["task_type"], r["instruction_language"]) for r in records}):
        path = folder / f"mymodel_{group}_{language}_vie_score.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "edited_image", "instruction", "sementics_score", "quality_score",
                             "intersection_exist", "instruction_language"])
            for r in records:
                if (r["task_type"], r["instruction_language"]) == (group, language):
                    writer.writerow([r["key"], f"{r['key']}.png", "x", min(r["sc_scores"]), min(r["pq_scores"]),
                                     r["intersection_exist"], language])
        paths.append(path)
    return paths


def test_official_csvs_give_the_same_statistics(shared_dir, tmp_path, capsys):
    records = [json.loads(line) for line in open(f"{shared_dir}/fixtures/gedit/gedit_samples.jsonl")]
    paths = write_official_csvs(records, tmp_path)
    assert len(paths) == 22
    out = tmp_path / "imported.jsonl"
    assert main(["bench", "import-official", *map(str, paths), "--out", str(out)]) == 0
    assert "wrote 1212 judgements from 22 file(s)" in capsys.readouterr().out
    assert main(["bench", "stats", str(out), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    expected = json.load(open(f"{shared_dir}/fixtures/gedit/gedit_expected.json"))["scores"]
    for language in expected:
        for subset in expected[language]:
            for group, values in expected[language][subset].items():
                assert imported[language][subset][group] == pytest.approx(values, abs=1e-9, rel=0)
    assert compute_statistics([json.loads(x) for x in out.read_text().splitlines()], bootstrap=0).counts[
        "en"]["full"]["total"] == {"scored": 606, "failed": 0}


def test_snapshot_csv_keys_come_from_edited_image_and_bad_names_are_refused(tmp_path):
    path = tmp_path / "m_subject-add_gpt_score.csv"
    path.write_text("source_image,edited_image,instruction,sementics_score,quality_score,intersection_exist,"
                    "instruction_language\nsrc.png,results/m/fullset/subject-add/en/abc123.png,add a cat,7.0,8,False,en\n")
    (record,) = read_official_csv(path)
    assert (record["key"], record["task_type"], record["sc_scores"], record["intersection_exist"]) == (
        "abc123", "subject-add", [7], False)
    combined = tmp_path / "m_combined_gpt_score.csv"
    combined.write_text(path.read_text())
    with pytest.raises(DataFormatError, match="no GEdit-Bench task group"):
        read_official_csv(combined)
    broken = tmp_path / "m_color_alter_en_vie_score.csv"
    broken.write_text("key,sementics_score\na,5\n")
    with pytest.raises(DataFormatError, match="not an official GEdit-Bench score row"):
        read_official_csv(broken)
