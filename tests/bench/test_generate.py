"""Generating GEdit-Bench edits: official layout, resumable, sharded, with a run manifest."""

import json
from types import SimpleNamespace

import pytest
from PIL import Image, ImageOps

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import Editor, PipelineEditor, generate
from step1x_edit.bench.layout import find_edited_image
from step1x_edit.errors import DataFormatError, Step1XEditError


class CountingEditor:
    """Inverts the image and counts calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, instruction, seed):
        self.calls.append((instruction, seed))
        return ImageOps.invert(image)


@pytest.fixture
def samples(gedit_copy):
    return load_gedit(gedit_copy, allow_partial=True)


def test_edits_land_in_official_layout_with_manifest(samples, tmp_path):
    editor = CountingEditor()
    assert isinstance(editor, Editor)
    results = tmp_path / "results" / "inverter"
    summary = generate(samples, editor, results, seed=7, settings={"model": "inverter"}, progress=False)
    assert (summary.written, summary.skipped, summary.shard) == (12, 0, (0, 1))
    for sample in samples:
        path = results / "fullset" / sample.task_type / sample.language / f"{sample.key}.png"
        assert Image.open(path).tobytes() == ImageOps.invert(sample.input_image).tobytes()
    assert {seed for _, seed in editor.calls} == {7}
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["run"] == {"seed": 7, "source_column": "input_image", "model": "inverter"}
    assert {"python", "torch", "diffusers", "transformers"} <= set(manifest["software"])
    assert not list(results.rglob("*.partial.png"))


def test_rerun_skips_finished_samples(samples, tmp_path):
    results = tmp_path / "inverter"
    generate(samples[:5], CountingEditor(), results, progress=False, shard=(0, 1))
    editor = CountingEditor()
    summary = generate(samples, editor, results, progress=False, shard=(0, 1))
    assert (summary.written, summary.skipped) == (7, 5)
    assert [instruction for instruction, _ in editor.calls] == [s.instruction for s in samples[5:]]


def test_rerun_with_other_settings_is_refused(samples, tmp_path):
    generate(samples[:1], CountingEditor(), tmp_path / "m", seed=0, progress=False, shard=(0, 1))
    with pytest.raises(Step1XEditError, match="different settings \\(seed\\)"):
        generate(samples, CountingEditor(), tmp_path / "m", seed=1, progress=False, shard=(0, 1))


def test_shards_split_the_work_without_overlap(samples, tmp_path):
    editors = [CountingEditor(), CountingEditor(), CountingEditor()]
    for index, editor in enumerate(editors):
        generate(samples, editor, tmp_path / "m", progress=False, shard=(index, 3))
    edited = [instruction for editor in editors for instruction, _ in editor.calls]
    assert sorted(edited) == sorted(s.instruction for s in samples)
    assert all(find_edited_image(tmp_path / "m", s) is not None for s in samples)


def test_other_models_edits_are_found_with_any_extension(samples, tmp_path):
    sample = samples[0]
    folder = tmp_path / "other" / "fullset" / sample.task_type / sample.language
    folder.mkdir(parents=True)
    sample.input_image.save(folder / f"{sample.key}_SRCIMG.png")
    assert find_edited_image(tmp_path / "other", sample) is None
    sample.input_image.save(folder / f"{sample.key}.jpg")
    assert find_edited_image(tmp_path / "other", sample) == folder / f"{sample.key}.jpg"


class FakePipeline:
    """Stands in for Step1XEditPipeline: records the call, returns the input rotated."""

    def __init__(self, version=None):
        self.received = {}
        if version is not None:
            self.transformer = SimpleNamespace(config=SimpleNamespace(version=version))

    def __call__(self, **kwargs):
        self.received = kwargs
        return SimpleNamespace(images=[kwargs["image"].rotate(90)])


def test_pipeline_editor_calls_the_public_pipeline_api(samples):
    pipe = FakePipeline(version="v1.1")
    editor = PipelineEditor(pipe, num_inference_steps=3, guidance_scale=4.5, size_level=512, model="some/dir")
    out = editor(samples[0].input_image, "make it red", seed=5)
    assert out.size == samples[0].input_image.size
    assert pipe.received["image"] is not None and pipe.received["prompt"] == "make it red"
    assert pipe.received["num_inference_steps"] == 3 and pipe.received["guidance_scale"] == 4.5
    assert pipe.received["size_level"] == 512 and pipe.received["negative_prompt"] == ""
    assert pipe.received["generator"].initial_seed() == 5
    assert editor.settings() == {"model": "some/dir", "version": "v1.1", "num_inference_steps": 3,
                                 "guidance_scale": 4.5, "size_level": 512, "negative_prompt": ""}
    assert PipelineEditor(FakePipeline()).settings()["version"] is None


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"[1, 2]", b'{"run": [1]', b"7"])
def test_a_corrupt_manifest_is_refused_with_one_line(content, samples, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_bytes(content)
    with pytest.raises(DataFormatError, match="manifest.json is not a generation manifest"):
        generate(samples[:1], CountingEditor(), tmp_path / "m", progress=False, shard=(0, 1))


def test_a_manifest_whose_run_is_not_an_object_names_every_setting(samples, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text('{"run": "odd"}')
    with pytest.raises(Step1XEditError, match=r"different settings \(seed, source_column\)"):
        generate(samples[:1], CountingEditor(), tmp_path / "m", progress=False, shard=(0, 1))
