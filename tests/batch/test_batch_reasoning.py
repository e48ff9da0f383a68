"""Batch editing with a v1.2 model thinks and reflects as asked, records each sample's trace, and refuses the
options for a model that cannot reason before any work."""

import json

import pandas as pd
import pytest
from PIL import Image

from step1x_edit import reasoning
from step1x_edit.batch import ModelSpec, Settings, edit_batch
from step1x_edit.cli import main

SUCCESS = '<#Think> Done. <#Success>'
SCORES = '{"score": [8, 7], "reasoning": "ok"}'


def scripted(stage, messages):
    """The reasoning model's replies: a rewrite, then every edit judged a success."""
    return {"prompt_reformat": "Paint the square red.", "generate_descriptions": "A red square.",
            "evaluate_consistency": '{"score": [9], "reasoning": "same"}', "generate_reflection": SUCCESS,
            "generate_score1": SCORES, "generate_score2": SCORES}[stage]


@pytest.fixture(scope="module")
def tiny_v1p2_dir(tmp_path_factory):
    from step1x_edit.testing.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("v1p2") / "model"
    tiny_pipeline(version="v1.2").save_pretrained(folder)
    return folder


def _pairs(tmp_path, count: int = 2):
    for index in range(count):
        Image.new("RGB", (72, 56), (30 * index, 90, 160)).save(tmp_path / f"{index}.png")
    lines = [json.dumps({"image": f"{index}.png", "instruction": "make it red"}) for index in range(count)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "pairs.jsonl"


def test_a_v1p2_batch_thinks_and_records_each_samples_trace(tiny_v1p2_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(reasoning.LocalChat, "__call__", lambda self, stage, messages: scripted(stage, messages))
    model = ModelSpec(str(tiny_v1p2_dir), device="cpu", think=True, max_tries=2)
    summary = edit_batch(_pairs(tmp_path), tmp_path / "out", model=model, progress=False,
                         settings=Settings(num_inference_steps=1, size_level=64))
    assert (summary.edited, summary.failed) == (2, 0)
    rows = pd.read_parquet(tmp_path / "out" / "shards")
    traces = [json.loads(text) for text in rows["reasoning"]]
    assert all(trace["think"] and trace["rewritten"] == "Paint the square red." for trace in traces)
    assert all(trace["max_tries"] == 2 and trace["rounds"][trace["chosen"]]["decision"] == "success"
               for trace in traces)


def test_a_batch_without_reasoning_leaves_the_column_empty(tmp_path):
    summary = edit_batch(_pairs(tmp_path, 1), tmp_path / "out", model=ModelSpec(device="cpu"), progress=False)
    assert summary.edited == 1
    assert pd.read_parquet(tmp_path / "out" / "shards")["reasoning"].isna().all()


def test_reasoning_options_for_a_model_that_cannot_reason_are_refused_before_any_work(tmp_path, capsys):
    code = main(["edit-batch", str(_pairs(tmp_path, 1)), "--out", str(tmp_path / "out"), "--think", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "need a v1.2 model" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()
