"""The in-process transformers judge with a tiny random Qwen2.5-VL: a real generate call whose random reply is
unparseable, which is recorded as a failed judgement (never a score)."""

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from step1x_edit.bench.dataset import load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judges.transformers_judge import TransformersJudge
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.stats import compute_statistics, format_statistics, read_scores
from step1x_edit.errors import CheckpointError, Step1XEditError

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}{% if c.type == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TinyQwenProcessor:
    """The parts of Qwen2.5-VL's processor a judge uses: chat template, image-token expansion, decoding.

    (transformers' ``Qwen2_5_VLProcessor`` also insists on a video processor, which needs torchvision.)
    """

    def __init__(self):
        vocab = {token: i for i, token in enumerate(SPECIAL + [chr(c) for c in range(32, 127)] + ["\n"])}
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        self.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, unk_token="<|endoftext|>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
            additional_special_tokens=SPECIAL[1:], chat_template=CHAT_TEMPLATE,
        )
        self.image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
        self.vocab = vocab

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return self.tokenizer.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=add_generation_prompt)

    def __call__(self, text, images, return_tensors):
        vision = self.image_processor(images=images, return_tensors=return_tensors)
        merge = self.image_processor.merge_size**2
        prompt = text[0]
        for grid in vision["image_grid_thw"]:
            prompt = prompt.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // merge), 1)
        encoded = self.tokenizer([prompt.replace("<|placeholder|>", "<|image_pad|>")], return_tensors=return_tensors)
        encoded.update(vision)
        return encoded

    def batch_decode(self, ids, skip_special_tokens):
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)


def tiny_qwen25_vl(vocab: dict[str, int]) -> Qwen2_5_VLForConditionalGeneration:
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                       "fullatt_block_indexes": [0]},
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
        eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def tiny_judge():
    processor = TinyQwenProcessor()
    return TransformersJudge(tiny_qwen25_vl(processor.vocab), processor, name="tiny-qwen2.5-vl", max_new_tokens=6)


def test_random_vlm_reply_is_recorded_as_failed_not_scored(tiny_judge, gedit_copy, tmp_path):
    samples = load_gedit(gedit_copy, languages=["en"], tasks=["color_alter"], allow_partial=True)
    generate(samples, lambda image, instruction, seed: image.rotate(180), tmp_path / "rot", shard=(0, 1),
             progress=False)
    scores = tmp_path / "scores.jsonl"
    summary = judge_results(samples, tmp_path / "rot", tiny_judge, scores, policy=RetryPolicy(2, 0.0, 0.0),
                            progress=False)
    assert summary.asked == {"failed": 2}
    record = read_scores(scores)[0]
    assert record["judge"] == {"kind": "transformers", "model": "tiny-qwen2.5-vl", "endpoint": "in-process"}
    assert record["sc_scores"] is None and record["pq_scores"] is None
    assert [a["error"] for a in record["attempts"]["sc"]] == ["unparseable reply"] * 2
    assert all(isinstance(a["reply"], str) for a in record["attempts"]["pq"])
    stats = compute_statistics(read_scores(scores))
    assert stats.counts["en"]["full"]["color_alter"] == {"scored": 0, "failed": 2}
    assert "color_alter: -, -, -   (no scored sample)   2 failed" in format_statistics(stats)


def test_greedy_decoding_is_deterministic(tiny_judge):
    images = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (50, 50), (0, 90, 0))]
    first = tiny_judge.complete("Rate these images.", images)
    assert first == tiny_judge.complete("Rate these images.", images)


def test_loading_a_saved_vlm_judge_works_or_names_the_missing_package(tmp_path):
    processor = TinyQwenProcessor()
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    tiny_qwen25_vl(processor.vocab).save_pretrained(tmp_path)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(Step1XEditError, match="needs a package that is not installed.*torchvision"):
            TransformersJudge.from_pretrained(str(tmp_path), device="cpu")
    else:
        judge = TransformersJudge.from_pretrained(str(tmp_path), device="cpu")
        assert judge.info["model"] == str(tmp_path)
    with pytest.raises(CheckpointError, match="cannot load a judge VLM"):
        TransformersJudge.from_pretrained(str(tmp_path / "absent"), device="cpu")
