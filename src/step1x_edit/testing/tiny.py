"""Tiny, deterministic stand-ins for the Step1X-Edit components: random weights, CPU, milliseconds, no network.

They have the real architectures and interfaces at toy sizes, so tests and examples exercise the same code
paths as the released models:

* :func:`tiny_tokenizer`: a byte-level BPE with the Qwen2 pre-tokenizer, trained in a few milliseconds on a
  built-in corpus (the prompt prefix and some instructions), with the Qwen special tokens after the regular
  vocabulary, "!" as id 0 (so the official ``ids > 0`` mask quirk is exercised), the curly quotes as single
  tokens and the stock Qwen2.5-VL chat template;
* :func:`tiny_processor`: the Qwen2.5-VL processor around it, with the official image limits
  (256-324 visual tokens);
* :func:`tiny_text_encoder`: a random ``Qwen2_5_VLForConditionalGeneration`` (2 layers, 1 vision block)
  whose special-token ids match the tiny tokenizer;
* :func:`save_tiny_mllm`: both written with ``save_pretrained``, as a folder that
  :func:`step1x_edit.models.mllm.load_text_encoder` and :func:`~step1x_edit.models.mllm.load_processor` read;
* :func:`tiny_pipeline`: a whole :class:`~step1x_edit.pipeline.Step1XEditPipeline` from the ``tiny`` presets;
* :func:`save_tiny_official`: a model folder in the released layout (official key names), for loader tests.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..models.mllm import QWEN2_5_VL_CHAT_TEMPLATE, build_processor
from ..protocol import protocol_text

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
TINY_VOCAB_SIZE = 768  # regular tokens (the 256 byte symbols and the learned merges)
_TRAINING_INSTRUCTIONS = [
    "You are a helpful assistant.", "Picture 1:", "assistant", "user", "system",
    "make the sky blue", "remove the cat", "add a red hat to the dog", "change the background to a beach",
    "replace the girl's hat with a crown", "it's a sunny day", "turn the car into a bicycle",
    "change the text “OPEN” to “CLOSED”", "write “A” on the wall", "add a sign that says “Hello World!”",
    "把“你好”改成“再见”", "make it look like a watercolor painting", "increase the brightness",
    "“ ” “1” “.” “!” “,” “?”", "0123456789",
]


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


@functools.cache
def _tiny_tokenizer_json() -> str:
    """Train the tiny BPE once per process (a few milliseconds) and return it serialized."""
    corpus = [protocol_text("step1x_v1_prefix.txt")] + _TRAINING_INSTRUCTIONS * 4
    return train_tokenizer(corpus, TINY_VOCAB_SIZE).backend_tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE tokenizer of about 780 tokens ("!" = id 0, specials last)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def tiny_processor():
    """The Qwen2.5-VL processor (official image limits, stock chat template) around :func:`tiny_tokenizer`."""
    return build_processor(tiny_tokenizer())


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
    from ..versions import get_version
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
    model = _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))
    return model.eval().requires_grad_(False)


def tiny_text_encoder(hidden_size: int = 32, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """:func:`build_text_encoder` for :func:`tiny_tokenizer`: 2 text layers, a vision block of width 16."""
    return build_text_encoder(tiny_tokenizer(), hidden_size=hidden_size, seed=seed)


def save_tiny_mllm(directory: str | os.PathLike, hidden_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny Qwen2.5-VL folder (weights, config, tokenizer, image processor, chat template) and return it."""
    directory = Path(directory)
    tiny_text_encoder(hidden_size, seed).save_pretrained(directory)
    processor = tiny_processor()
    processor.tokenizer.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)
    return directory


def _seeded(seed: int, build):
    """Run ``build()`` with the global torch RNG seeded, restoring the caller's RNG state afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def tiny_pipeline(seed: int = 0, version: str = "v1.1"):
    """A :class:`~step1x_edit.pipeline.Step1XEditPipeline` of tiny random components (float32, CPU).

    The same ``seed`` always gives the same weights; ``version`` selects the v1.0 or v1.1 behaviour
    (connector scale factor, reference position ids, CFG renorm, resize filter).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..models.presets import build_transformer, build_vae
    from ..pipeline import SCHEDULER_CONFIG, Step1XEditPipeline

    text_encoder = tiny_text_encoder(seed=seed)
    transformer = _seeded(seed + 1, lambda: build_transformer(
        "tiny", version=version, mllm_hidden_size=text_encoder.config.text_config.hidden_size))
    vae = _seeded(seed + 2, lambda: build_vae("tiny"))
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return Step1XEditPipeline(transformer.eval(), vae.eval(), text_encoder, tiny_processor(), scheduler)


def save_tiny_official(directory: str | os.PathLike, seed: int = 0, version: str = "v1.1") -> Path:
    """Write a tiny model in the released layout: ``step1x-edit-*.safetensors`` (official DiT + connector
    keys), ``vae.safetensors`` (official FLUX autoencoder keys) and ``Qwen2.5-VL-7B-Instruct/``."""
    from safetensors.torch import save_file

    from ..checkpoints.official import (
        MLLM_DIR_NAME,
        TRANSFORMER_CONFIG_FILE_NAME,
        VAE_FILE_NAME,
        transformer_state_dict_to_official,
        vae_state_dict_to_official,
    )
    from ..models.presets import vae_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipe = tiny_pipeline(seed=seed, version=version)
    file_name = get_version(version).official_files[0]
    save_file(transformer_state_dict_to_official(pipe.transformer), directory / file_name)
    save_file(vae_state_dict_to_official(pipe.vae, vae_config("tiny")), directory / VAE_FILE_NAME)
    save_tiny_mllm(directory / MLLM_DIR_NAME, seed=seed)
    config = pipe.transformer.config
    unreadable_from_weights = {"axes_dim": list(config.axes_dim), "theta": config.theta,
                               "connector_num_heads": config.connector_num_heads}
    (directory / TRANSFORMER_CONFIG_FILE_NAME).write_text(json.dumps(unreadable_from_weights, indent=1))
    return directory
