"""Thinking and reflection over the HTTP API and in the web UI: the options, the trace, and their refusal for
models of other versions."""

import base64
import io

import pytest
from PIL import Image
from serve_clients import local_client

from step1x_edit import reasoning
from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService

SUCCESS = "<#Think> Done. <#Success>"
REPLIES = {"prompt_reformat": "Paint the square red.", "generate_descriptions": "A red square.",
           "evaluate_consistency": '{"meets_instruction": "yes", "raw_score": 9}',
           "generate_score1": '{"score": [8, 8], "reasoning": "ok"}',
           "generate_score2": '{"score": [9, 9], "reasoning": "ok"}'}


@pytest.fixture(scope="module")
def service():
    from step1x_edit.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline(version="v1.2")
    pipe.register_to_config(default_num_inference_steps=1, default_size_level=64)
    return EditService(pipe, name="tiny-v1.2")


@pytest.fixture
def scripted(monkeypatch):
    """The model's reasoning replies scripted: the first reflection refines, the next ones succeed."""
    reflections = ["<#Think> Too pale. <#Reflection> Make it redder.", SUCCESS]

    def reply(self, stage, messages):
        if stage == reasoning.STAGE_REFLECT:
            return reflections.pop(0) if len(reflections) > 1 else reflections[0]
        return REPLIES[stage]

    monkeypatch.setattr(reasoning.LocalChat, "__call__", reply)


def _png(size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 60, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_edit_reflects_by_default_and_says_how_in_headers(service, scripted):
    client = local_client(create_app(service))
    response = client.post("/v1/edit", files={"image": ("a.png", _png(), "image/png")},
                           data={"instruction": "make it red", "seed": "3"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Reasoning-Rounds"] == "2" and response.headers["X-Reasoning-Chosen"] == "1"
    assert Image.open(io.BytesIO(response.content)).size == (48, 40)


def test_edit_as_json_carries_the_trace_with_every_round_image(service, scripted):
    client = local_client(create_app(service))
    response = client.post("/v1/edit", files={"image": ("a.png", _png(), "image/png")},
                           data={"instruction": "make it red", "think": "true", "max_tries": "2",
                                 "response_format": "json"})
    assert response.status_code == 200, response.text
    body = response.json()
    trace = body["reasoning"]
    assert trace["rewritten"] == "Paint the square red." and trace["max_tries"] == 2
    assert [item["decision"] for item in trace["rounds"]] == ["refine", "success"]
    assert Image.open(io.BytesIO(base64.b64decode(trace["rounds"][0]["image"]))).size == (48, 40)
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (48, 40)


def test_edit_without_reflection_edits_once(service, scripted):
    client = local_client(create_app(service))
    response = client.post("/v1/edit", files={"image": ("a.png", _png(), "image/png")},
                           data={"instruction": "make it red", "reflect": "false", "response_format": "json"})
    assert response.status_code == 200 and response.json()["reasoning"] is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_tries": "0"}, "max_tries must be an integer between 1 and 10"),
    ({"response_format": "xml"}, "response_format: image or json"),
])
def test_bad_reasoning_fields_are_refused_with_the_field_named(service, fields, message):
    client = local_client(create_app(service))
    response = client.post("/v1/edit", files={"image": ("a.png", _png(), "image/png")},
                           data={"instruction": "make it red", **fields})
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_reasoning_options_are_refused_for_a_model_of_another_version(demo_pipeline, example):
    client = local_client(create_app(EditService(demo_pipeline)))
    response = client.post("/v1/edit", files={"image": ("a.png", example.read_bytes(), "image/png")},
                           data={"instruction": "make it red", "think": "true"})
    assert response.status_code == 400 and "need a v1.2 model" in response.json()["error"]["message"]


def test_the_page_shows_the_rounds_and_the_reasoning(service, scripted, tmp_path):
    from step1x_edit.serve.webui import create_ui

    Image.open(io.BytesIO(_png())).save(tmp_path / "a.png")
    page = create_ui(service, examples=[])
    edit = next(dependency for dependency in page.fns.values() if dependency.api_name == "edit")
    image, seed, details, rounds = edit.fn(str(tmp_path / "a.png"), "make it red", 1, 1.0, 64, 1.0, 5, False,
                                           False, True, 3)
    assert seed == 5 and image.size == (48, 40) and len(rounds) == 2
    assert "round 2" in details and "success" in details and "chosen: round 2" in details
