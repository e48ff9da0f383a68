"""The v1.2 reasoning loop (thinking and reflection) behaves as the official pipeline's does."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from step1x_edit import reasoning
from step1x_edit.errors import InvalidValueError
from step1x_edit.reasoning import ReasoningOptions

SUCCESS = "<#Think> The edit is right. <#Success>"
GOOD_CONSISTENCY = '{"meets_instruction": "yes", "major_conflicts": 0, "raw_score": 8.5, "reason": "fine"}'


class ScriptedJudge:
    """Answers each stage from its own list of replies, in order (the last one repeats); records every call."""

    def __init__(self, **replies):
        self.replies = {stage: list(items) for stage, items in replies.items()}
        self.stages = []

    def __call__(self, stage, messages):
        self.stages.append(stage)
        items = self.replies[stage]
        return items.pop(0) if len(items) > 1 else items[0]


def judge(reflections, edit_scores=('{"score": [8, 7], "reasoning": "ok"}',),
          quality_scores=('{"score": [9, 9], "reasoning": "ok"}',), consistency=(GOOD_CONSISTENCY,), rewrite=("",)):
    return ScriptedJudge(prompt_reformat=rewrite, generate_descriptions=["A red square."],
                         evaluate_consistency=consistency, generate_reflection=reflections,
                         generate_score1=edit_scores, generate_score2=quality_scores)


class RecordingEditor:
    """A stand-in for the pipeline's edit: a new solid image per call, remembering what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, source, instruction):
        self.calls.append((source, instruction))
        return Image.new("RGB", source.size, (len(self.calls) * 40, 0, 0))


def test_reasoning_units_match_the_official_thinker(shared_dir):
    from step1x_edit.testing.parity_diffusers import check_thinker_units

    path = Path(shared_dir) / "fixtures" / "step1x_official" / "v1.2" / "thinker" / "thinker.json"
    units = json.loads(path.read_text(encoding="utf-8"))["units"]
    assert check_thinker_units(units) == 0
    units["format_text"][0]["result"] = [False, None]  # a changed official answer is counted
    units["message_builders"][0]["_build_score1_messages"][0]["content"] += " "
    assert check_thinker_units(units) == 2


def test_refined_instruction_edits_the_last_result_and_success_stops():
    source = Image.new("RGB", (40, 32), (0, 0, 200))
    editor = RecordingEditor()
    model = judge(["<#Think> Not red yet. <#Reflection> Make it darker red.", SUCCESS],
                  edit_scores=['{"score": [6, 7], "reasoning": "a"}', '{"score": [9, 8], "reasoning": "b"}'])
    trace = reasoning.run(editor, source, "make it red", ReasoningOptions(), model, seed=3)
    assert [item.source for item in trace.rounds] == ["original", "previous"]
    assert editor.calls[1][0] is trace.rounds[0].image and editor.calls[1][1] == " Make it darker red."
    assert [item.decision for item in trace.rounds] == ["refine", "success"]
    assert [item.score for item in trace.rounds] == [54, 72] and trace.chosen == 1
    assert trace.image is trace.rounds[1].image and trace.seed == 3
    # every round judges against the original image and instruction
    assert all("make it red" in call.messages[1]["content"][-1]["text"] for call in trace.calls
               if call.stage == reasoning.STAGE_SCORE_EDIT)


def test_failed_reflection_restarts_from_the_original_with_the_rewritten_instruction():
    source = Image.new("RGB", (40, 32), (0, 0, 200))
    editor = RecordingEditor()
    model = judge(["<#Think> Broken. <#Failed>"], rewrite=["Paint the square red."])
    trace = reasoning.run(editor, source, "redden", ReasoningOptions(think=True, max_tries=2), model, seed=0)
    assert trace.rewritten == "Paint the square red."
    assert [(item.source, item.instruction) for item in trace.rounds] == [
        ("original", "Paint the square red."), ("original", "Paint the square red.")]
    assert all(call[0] is source for call in editor.calls)
    assert trace.chosen == 1  # equal scores, neither a success: the later round


def test_best_round_is_chosen_by_score_then_success_then_lateness():
    def round_(score, reflection):
        judgement = reasoning.Judgement("", {}, reflection, {}, {})
        return reasoning.ReasoningRound(0, "original", "", Image.new("RGB", (1, 1)), judgement, score)

    refine, failed = "<#Think> a <#Reflection> b", "<#Think> a <#Failed>"
    assert reasoning.choose_round([round_(30, refine), round_(56, failed), round_(42, SUCCESS)]) == 1
    assert reasoning.choose_round([round_(42, SUCCESS), round_(42, refine)]) == 0
    assert reasoning.choose_round([round_(42, refine), round_(42, SUCCESS), round_(42, SUCCESS)]) == 2
    assert reasoning.choose_round([round_(None, SUCCESS), round_(0, failed)]) == 1


def test_unusable_replies_are_asked_again_then_the_round_fails_and_scores_zero():
    editor = RecordingEditor()
    model = judge(["unused"], edit_scores=["not json"], consistency=["no json here"])
    trace = reasoning.run(editor, Image.new("RGB", (16, 16)), "x", ReasoningOptions(max_tries=1), model, seed=0)
    item = trace.rounds[0]
    assert item.judgement.reflection == reasoning.FAILED_REFLECTION and item.decision == "failed"
    assert item.judgement.edit_scores == {"score": [0, 0], "reasoning": "score1 evaluation failed after 20 attempts."}
    assert item.score == 0
    assert model.stages.count(reasoning.STAGE_CONSISTENCY) == reasoning.MAX_STAGE_TRIES
    assert model.stages.count(reasoning.STAGE_SCORE_EDIT) == reasoning.MAX_STAGE_TRIES
    assert reasoning.STAGE_REFLECT not in model.stages


def test_consistency_score_is_capped_as_the_official_code_caps_it():
    capped = reasoning.finalize_consistency({"meets_instruction": "Partial", "raw_score": 0.95, "hallucinations": 1})
    assert capped["score"] == 5.0 and capped["raw_score"] == 9.5
    assert capped["cap_trace"] == ["cap<=5: 仅部分满足指令", "cap<=7: 幻觉x1", "cap<9: 存在明显差异/问题"]
    assert reasoning.finalize_consistency({"meets_instruction": "", "raw_score": 9.5})["score"] == 8.99


def test_reasoning_with_a_model_of_another_version_is_refused_in_one_line():
    from step1x_edit.testing.tiny import tiny_pipeline

    with pytest.raises(InvalidValueError, match=r"need a v1.2 model.*is v1.1 \(asked for: thinking\)") as error:
        tiny_pipeline(version="v1.1")(image=Image.new("RGB", (32, 32)), prompt="x", num_inference_steps=1,
                                      reasoning=ReasoningOptions(think=True))
    assert "\n" not in str(error.value)
    with pytest.raises(InvalidValueError, match="asked for: reflection and max_tries"):
        reasoning.options_for("v1.0", reflect=True, max_tries=2)
    assert reasoning.options_for("v1.1") == reasoning.PLAIN


def test_plain_v1p2_call_reflects_over_three_rounds_without_thinking():
    options = reasoning.resolve_options("v1.2", None)
    assert (options.think, options.reflect, options.max_tries, options.max_new_tokens) == (False, True, 3, 128)
    assert reasoning.resolve_options("v1.1", None) == reasoning.PLAIN


@pytest.fixture(scope="module")
def tiny_v1p2():
    from step1x_edit.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline(version="v1.2")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_reflects_end_to_end_with_a_tiny_model_and_a_scripted_judge(tiny_v1p2):
    model = judge(["<#Think> Too pale. <#Reflection> Make it much redder.", SUCCESS])
    source = Image.new("RGB", (72, 56), (30, 90, 160))
    output = tiny_v1p2(image=source, prompt="make it red", num_inference_steps=2, size_level=64,
                       generator=torch.Generator().manual_seed(0), reasoning=ReasoningOptions(judge=model))
    trace = output.reasoning[0]
    assert len(trace.rounds) == 2 and trace.rounds[1].instruction == " Make it much redder."
    assert output.images[0] is trace.image and output.images[0].size == (72, 56)
    record = json.loads(json.dumps(trace.to_dict()))
    assert record["chosen"] == trace.chosen and record["rounds"][0]["decision"] == "refine"
    assert [call["stage"] for call in record["calls"]][:5] == [
        "generate_descriptions", "evaluate_consistency", "generate_reflection", "generate_score1", "generate_score2"]


def test_local_model_replies_repeat_with_a_seed_and_respect_the_reply_cap(tiny_v1p2):
    messages = reasoning.rewrite_messages(reasoning.image_data_url(Image.new("RGB", (40, 40))), "make it red")
    tokenizer = tiny_v1p2.processor.tokenizer

    def reply(**settings):
        return reasoning.LocalChat(tiny_v1p2.text_encoder, tiny_v1p2.processor, **settings)("x", messages)

    assert reply(max_new_tokens=6, seed=5) == reply(max_new_tokens=6, seed=5)
    assert len(tokenizer(reply(max_new_tokens=6, seed=7), add_special_tokens=False).input_ids) <= 8
    assert reply(max_new_tokens=6, greedy=True, seed=1) == reply(max_new_tokens=6, greedy=True, seed=2)


def test_openai_judge_sends_the_messages_and_retries_a_rate_limit():
    import httpx
    import openai

    request = httpx.Request("POST", "http://judge/v1/chat/completions")
    sent = []

    class Completions:
        def create(self, **kwargs):
            sent.append(kwargs)
            if len(sent) == 1:
                raise openai.RateLimitError("slow down", response=httpx.Response(429, request=request,
                                                                                 headers={"retry-after": "0"}),
                                            body=None)
            message = type("Message", (), {"content": f"  {SUCCESS}  "})
            return type("Response", (), {"choices": [type("Choice", (), {"message": message})]})

    client = type("Client", (), {"chat": type("Chat", (), {"completions": Completions()})})
    chat = reasoning.OpenAIChat("judge-vlm", client=client, max_tokens=512, seed=4)
    assert chat(reasoning.STAGE_REFLECT, [{"role": "user", "content": "hi"}]) == SUCCESS
    assert len(sent) == 2 and sent[1]["max_tokens"] == 512 and sent[1]["seed"] == 4
    assert (sent[1]["temperature"], sent[1]["top_p"]) == (reasoning.TEMPERATURE, reasoning.TOP_P)


def test_edit_command_thinks_reflects_and_writes_the_trace(tiny_v1p2, tmp_path, monkeypatch, capsys):
    from step1x_edit import cli

    model = judge(["<#Think> Faint. <#Reflection> Add a bolder red.", SUCCESS], rewrite=["Paint the sign red."])
    monkeypatch.setattr(reasoning.LocalChat, "__call__", lambda self, stage, messages: model(stage, messages))
    monkeypatch.setattr(cli, "_load_model", lambda args, scales: tiny_v1p2)
    Image.new("RGB", (72, 56), (20, 120, 200)).save(tmp_path / "in.png")
    code = cli.main(["edit", str(tmp_path / "in.png"), "make the sign pop", "--version", "v1.2", "--steps", "1",
                     "--size-level", "64", "--think", "--max-tries", "2", "--verbose", "--trace-json",
                     str(tmp_path / "trace.json"), "-o", str(tmp_path / "out.png")])
    assert code == 0 and Image.open(tmp_path / "out.png").size == (72, 56)
    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    assert trace["rewritten"] == "Paint the sign red." and trace["think"] and trace["max_tries"] == 2
    assert [item["decision"] for item in trace["rounds"]] == ["refine", "success"] and trace["seed"] == 42
    assert "round 2 (previous image, 'Add a bolder red.'): success" in capsys.readouterr().err


def test_edit_command_refuses_reasoning_options_with_another_model_before_loading_it(tmp_path, capsys):
    from step1x_edit.cli import main

    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "make it red", "--think", "--greedy"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "need a v1.2 model" in error and "asked for: thinking and greedy" in error


def test_gedit_generation_records_whether_v1p2_thinks_and_reflects(tiny_v1p2, monkeypatch):
    from step1x_edit.bench.generate import PipelineEditor

    model = judge([SUCCESS], rewrite=["Paint it red."])
    monkeypatch.setattr(reasoning.LocalChat, "__call__", lambda self, stage, messages: model(stage, messages))
    editor = PipelineEditor(tiny_v1p2, num_inference_steps=1, size_level=64, reasoning=ReasoningOptions(think=True))
    assert editor(Image.new("RGB", (40, 40)), "make it red", seed=1).size == (40, 40)
    assert model.stages[0] == reasoning.STAGE_REWRITE
    assert editor.settings()["reasoning"] == {"think": True, "reflect": True, "max_tries": 3, "max_new_tokens": 128,
                                              "greedy": False}
    assert "reasoning" not in PipelineEditor(tiny_v1p2, reasoning=reasoning.PLAIN).settings()


def test_gedit_generation_refuses_reasoning_for_another_model():
    from step1x_edit.bench.generate import PipelineEditor

    with pytest.raises(InvalidValueError, match="asked for: reflection"):
        PipelineEditor.from_model(None, device="cpu", reflect=True)
