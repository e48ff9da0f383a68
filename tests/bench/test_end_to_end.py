"""End to end: a GEdit-format Parquet copy, edits by the tiny Step1X-Edit pipeline, VIEScore judging over real
HTTP by a local OpenAI-compatible server that also misbehaves, statistics and report through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import step1x_edit
from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import PipelineEditor, generate
from step1x_edit.bench.judges.openai_judge import OpenAIJudge
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.stats import compute_statistics, read_scores
from step1x_edit.cli import main
from step1x_edit.testing import tiny

STEPS = 2
SIZE_LEVEL = 64


def judge_reply(request, call):
    """Well-formed scores, except: every other PQ call is a 500 (so each sample's first PQ call fails when they are
    asked one at a time), and the SC question of one instruction is always refused."""
    content = request["messages"][0]["content"]
    text = content[0]["text"]
    if "subject-add 1" in text:
        message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    elif len(content) == 2 and call % 2 == 0:
        return 500, {"error": {"message": "overloaded"}}
    else:
        scores = [9, 8] if len(content) == 2 else [6, 8]  # PQ = 8, SC = 6
        message = {"role": "assistant", "content": json.dumps({"score": scores, "reasoning": "fine"})}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}


def test_tiny_pipeline_edits_are_judged_and_failures_counted(gedit_copy, chat_server, tmp_path):
    samples = load_gedit(gedit_copy, languages=["en"], tasks=["color_alter", "subject-add"], allow_partial=True)
    pipe = tiny.tiny_pipeline(seed=0)
    editor = PipelineEditor(pipe, num_inference_steps=STEPS, size_level=SIZE_LEVEL, model="tiny")
    results = tmp_path / "results" / "tiny"
    summary = generate(samples, editor, results, seed=3, settings=editor.settings(), shard=(0, 1), progress=False)
    assert summary.written == len(samples) == 4
    for sample in samples:
        edited = Image.open(results / "fullset" / sample.task_type / "en" / f"{sample.key}.png")
        assert edited.size == sample.input_image.size
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["run"]["num_inference_steps"] == STEPS and manifest["run"]["seed"] == 3
    assert manifest["run"]["version"] == "v1.1" and manifest["run"]["model"] == "tiny"

    # The same seed reproduces the same edit.
    again = editor(samples[0].input_image, samples[0].instruction, seed=3)
    first = Image.open(results / "fullset" / samples[0].task_type / "en" / f"{samples[0].key}.png")
    assert again.tobytes() == first.tobytes()

    server = chat_server(judge_reply, route=lambda r: len(r["messages"][0]["content"]))
    judge = OpenAIJudge(model="m", base_url=server.url, api_key="k", timeout=5, concurrency=1)
    scores = tmp_path / "tiny.jsonl"
    policy = RetryPolicy(attempts=2, initial_delay=0.0, max_delay=0.0)
    assert judge_results(samples, results, judge, scores, policy=policy, progress=False).asked == {"ok": 3, "failed": 1}
    stats = compute_statistics(read_scores(scores), bootstrap=100)
    assert stats.counts["en"]["full"]["subject-add"] == {"scored": 1, "failed": 1}
    assert stats.scores["en"]["full"]["average"] == pytest.approx([6.0, 8.0, (6 * 8) ** 0.5])
    assert server.calls[2] == 2 * len(samples)  # every PQ question: a 500, then a reply


def test_cli_generates_with_the_built_in_model_and_resumes(gedit_copy, tmp_path, capsys):
    argv = ["bench", "generate", "--bench", str(gedit_copy), "--allow-partial", "--out", str(tmp_path / "results"),
            "--lang", "en", "--tasks", "color_alter", "--steps", str(STEPS),
            "--size-level", str(SIZE_LEVEL), "--device", "cpu", "--processes", "1"]
    assert main(argv) == 0
    assert "wrote 2 edits, 0 already present" in capsys.readouterr().out
    edits = sorted((tmp_path / "results" / "step1x-edit" / "fullset").rglob("*.png"))
    assert [path.parent.parent.name for path in edits] == ["color_alter", "color_alter"]
    manifest = json.loads((tmp_path / "results" / "step1x-edit" / "manifest.json").read_text())
    assert manifest["run"]["model"] == "default" and manifest["run"]["size_level"] == SIZE_LEVEL
    assert main(argv) == 0
    assert "wrote 0 edits, 2 already present" in capsys.readouterr().out


def test_torchrun_processes_split_the_samples(gedit_copy, tmp_path):
    source_root = Path(step1x_edit.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source_root), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "step1x_edit.cli",
               "bench", "generate", "--bench", str(gedit_copy), "--allow-partial", "--out", str(tmp_path / "results"),
               "--lang", "en", "--tasks", "color_alter,subject-add", "--steps", str(STEPS),
               "--size-level", str(SIZE_LEVEL)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shard 1/2: wrote 2 edits" in done.stdout and "shard 2/2: wrote 2 edits" in done.stdout
    assert len(list((tmp_path / "results" / "step1x-edit" / "fullset").rglob("*.png"))) == 4
