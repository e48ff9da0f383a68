"""Builders of the demo model's own components: a Qwen2-style BPE tokenizer trained on a corpus and a randomly
initialised Qwen2.5-VL text encoder of any small size whose special-token ids match that tokenizer.

The demo recipe trains its tokenizer on the dataset's instructions (:func:`train_tokenizer`) and builds its frozen
encoder with :func:`build_text_encoder`; :mod:`step1x_edit.testing.tiny` makes the tiny test components with them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..models.mllm import QWEN2_5_VL_CHAT_TEMPLATE

# The Qwen2.5-VL special tokens, in the order of their ids (right after the regular vocabulary).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
# The Qwen2 pre-tokenizer split (letters, single digits, punctuation runs, newlines, spaces).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE with ``vocab_size`` regular tokens learned from ``corpus``, the Qwen special
    tokens after them ("!" is id 0, as in Qwen) and the stock Qwen2.5-VL chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.add_special_tokens(QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_text_encoder(
    tokenizer, hidden_size: int = 32, num_layers: int = 2, vision_hidden_size: int = 16, seed: int = 0
) -> Qwen2_5_VLForConditionalGeneration:
    """A random Qwen2.5-VL (``num_layers`` text layers of width ``hidden_size``, 2 heads, 1 vision block of width
    ``vision_hidden_size``, 14-px patches, 2 x 2 merge) whose vocabulary and special-token ids are those of
    ``tokenizer``. Eval mode, float32, no gradients; the same ``seed`` gives the same weights."""
    if hidden_size % 8:
        raise ValueError(f"hidden_size must be a multiple of 8 (2 heads, 3-axis M-RoPE), got {hidden_size}")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    rotary_half = hidden_size // 4  # head_dim / 2 with 2 heads
    spatial = 3 * rotary_half // 8
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
            "rope_scaling": {"type": "mrope", "mrope_section": [rotary_half - 2 * spatial, spatial, spatial]},
        },
        vision_config={
            "depth": 1, "hidden_size": vision_hidden_size, "intermediate_size": 2 * vision_hidden_size,
            "num_heads": 2, "out_hidden_size": hidden_size, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config._attn_implementation = "sdpa"
    model = seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))
    return model.eval().requires_grad_(False)


def seeded(seed: int, build):
    """Run ``build()`` with the global torch RNG seeded, restoring the caller's RNG state afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)
