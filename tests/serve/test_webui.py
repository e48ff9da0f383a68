"""The web UI: one press of Edit, its errors, its examples, and the page served beside the HTTP API."""

import dataclasses
import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from serve_clients import local_client

from step1x_edit.data.synthetic.examples import example_scenes, render_example_images
from step1x_edit.data.synthetic.world import render
from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService
from step1x_edit.serve.webui import create_ui, edit_for_ui

INSTRUCTION = "Make the red circle green."


def test_an_edit_from_the_page_gives_the_image_and_the_seed_that_reproduces_it(demo_pipeline, example):
    service = EditService(demo_pipeline)
    settings = (1, 1.0, 96, 1.0)
    image, seed, details = edit_for_ui(service, str(example), INSTRUCTION, *settings, 0, True)
    assert image.size == (256, 256)
    assert f"seed {seed}" in details
    again, same_seed, _ = edit_for_ui(service, str(example), INSTRUCTION, *settings, seed, False)
    assert same_seed == seed
    assert np.array_equal(np.asarray(image), np.asarray(again))


@pytest.mark.parametrize(("image", "instruction", "seed", "message"),
                         [(None, INSTRUCTION, 0, "Upload an image"), ("example", "", 0, "instruction is empty"),
                          ("example", INSTRUCTION, None, "Enter a seed")])
def test_bad_input_on_the_page_is_shown_as_an_error(demo_pipeline, example, image, instruction, seed, message):
    image = str(example) if image == "example" else image
    with pytest.raises(gr.Error, match=message):
        edit_for_ui(EditService(demo_pipeline), image, instruction, 1, 1.0, 96, 1.0, seed, False)


def test_the_page_offers_the_example_scenes(demo_pipeline):
    page = create_ui(EditService(demo_pipeline))
    examples = [block for block in page.blocks.values() if isinstance(block, gr.Dataset)]
    assert len(examples) == 1
    assert [row[1] for row in examples[0].raw_samples] == [
        "Change the background to cream.", 'Change the text "OPEN" to "CLOSED".', "Change the background to lavender.",
        "Change the background to a dark night sky."]


# What each example asks for, as the scene it should become.
EXAMPLE_TARGETS = {
    "shapes": lambda scene: dataclasses.replace(scene, background="cream"),
    "sign": lambda scene: dataclasses.replace(scene, sign=dataclasses.replace(scene.sign, word="CLOSED")),
    "person": lambda scene: dataclasses.replace(scene, background="lavender"),
    "portrait": lambda scene: dataclasses.replace(scene, background="night_sky"),
}


@pytest.mark.parametrize("name", list(EXAMPLE_TARGETS))
def test_each_example_is_an_edit_the_demo_model_makes_visibly(demo_pipeline, name):
    scene = next(scene for example, scene, _, _ in example_scenes() if example == name)
    instruction = next(text for example, _, text, _ in example_scenes() if example == name)
    source = np.asarray(render(scene), np.float32)
    region = np.abs(np.asarray(render(EXAMPLE_TARGETS[name](scene)), np.float32) - source).sum(-1) > 0
    edited = demo_pipeline(image=Image.fromarray(source.astype(np.uint8)), prompt=instruction,
                           generator=torch.Generator().manual_seed(0)).images[0]
    change = np.abs(np.asarray(edited.convert("RGB"), np.float32) - source)[region].mean()
    assert change > 10  # levels of 255 per channel where the edit applies; an edit the model leaves undone: 2-4


def test_the_bundled_examples_are_the_example_scenes(tmp_path):
    bundled = Path(__file__).resolve().parents[2] / "examples"
    fresh = render_example_images(tmp_path)
    listed = json.loads((bundled / "examples.json").read_text(encoding="utf-8"))
    assert [(Path(entry["path"]).name, entry["instruction_en"], entry["instruction_zh"]) for entry in listed] == [
        (Path(entry["path"]).name, entry["instruction_en"], entry["instruction_zh"]) for entry in fresh]
    for entry in fresh:
        assert np.array_equal(np.asarray(Image.open(entry["path"])),
                              np.asarray(Image.open(bundled / Path(entry["path"]).name)))


def test_the_server_mounts_the_page_at_ui_and_leads_there_from_the_root(demo_pipeline):
    client = local_client(create_app(EditService(demo_pipeline), ui=True))
    root = client.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/ui"
    page = client.get("/ui/")
    assert page.status_code == 200 and "gradio" in page.text.lower()
    assert client.get("/health").json()["status"] == "ok"


def test_the_page_edits_through_its_named_endpoint(demo_pipeline, example):
    page = create_ui(EditService(demo_pipeline))
    dependencies = [dependency for dependency in page.fns.values() if dependency.api_name == "edit"]
    assert len(dependencies) == 1 and len(dependencies[0].targets) == 2  # the button and Enter in the instruction
    image, seed, _ = dependencies[0].fn(str(example), INSTRUCTION, 1, 1.0, 96, 1.0, 4, False)
    assert seed == 4 and image.size == (256, 256)


def test_the_result_can_be_edited_further_and_the_demo_model_is_labelled(demo_pipeline):
    page = create_ui(EditService(demo_pipeline))
    components = {block._id: block for block in page.blocks.values()}
    sources = [block for block in components.values() if isinstance(block, gr.Image) and block.label == "Image"]
    results = [block for block in components.values() if isinstance(block, gr.Image) and block.label == "Edited"]
    handoff = [dependency for dependency in page.fns.values()
               if [block._id for block in dependency.inputs] == [results[0]._id]
               and [block._id for block in dependency.outputs] == [sources[0]._id]]
    assert len(handoff) == 1
    header = next(block for block in components.values() if isinstance(block, gr.Markdown))
    assert "built-in demo model" in header.value


def test_another_model_is_not_labelled_as_the_demo():
    from step1x_edit.testing.tiny import tiny_pipeline

    page = create_ui(EditService(tiny_pipeline()), examples=[])
    header = next(block for block in page.blocks.values() if isinstance(block, gr.Markdown))
    assert "demo" not in header.value
    assert not [block for block in page.blocks.values() if isinstance(block, gr.Dataset)]


def test_with_an_api_key_the_page_needs_a_login_whose_password_is_the_key(demo_pipeline):
    client = local_client(create_app(EditService(demo_pipeline), ui=True, api_key="s3cret"))
    assert client.get("/ui/config").status_code == 401
    assert client.post("/ui/login", data={"username": "anyone", "password": "wrong"}).status_code != 200
    assert client.post("/ui/login", data={"username": "anyone", "password": "s3cret"}).status_code == 200
    assert client.get("/ui/config").status_code == 200


def test_the_page_sends_no_usage_analytics(demo_pipeline):
    assert create_ui(EditService(demo_pipeline), examples=[]).analytics_enabled is False
