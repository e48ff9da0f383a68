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
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration

from ..demo.components import (
    QWEN_SPECIAL_TOKENS,
    build_text_encoder,
    seeded,
    train_tokenizer,
)
from ..models.mllm import QWEN2_5_VL_CHAT_TEMPLATE, build_processor
from ..protocol import protocol_text

TINY_VOCAB_SIZE = 768  # regular tokens (the 256 byte symbols and the learned merges)
_TRAINING_INSTRUCTIONS = [
    "You are a helpful assistant.", "Picture 1:", "assistant", "user", "system",
    "make the sky blue", "remove the cat", "add a red hat to the dog", "change the background to a beach",
    "replace the girl's hat with a crown", "it's a sunny day", "turn the car into a bicycle",
    "change the text “OPEN” to “CLOSED”", "write “A” on the wall", "add a sign that says “Hello World!”",
    "把“你好”改成“再见”", "make it look like a watercolor painting", "increase the brightness",
    "“ ” “1” “.” “!” “,” “?”", "0123456789",
]


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


def tiny_pipeline(seed: int = 0, version: str = "v1.1"):
    """A :class:`~step1x_edit.pipeline.Step1XEditPipeline` of tiny random components (float32, CPU).

    The same ``seed`` always gives the same weights; ``version`` selects the v1.0 or v1.1 behaviour
    (connector scale factor, reference position ids, CFG renorm, resize filter).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..models.presets import build_transformer, build_vae
    from ..pipeline import SCHEDULER_CONFIG, Step1XEditPipeline

    text_encoder = tiny_text_encoder(seed=seed)
    transformer = seeded(seed + 1, lambda: build_transformer(
        "tiny", version=version, mllm_hidden_size=text_encoder.config.text_config.hidden_size))
    vae = seeded(seed + 2, lambda: build_vae("tiny"))
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
    from ..versions import get_version

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


def save_tiny_official_diffusers(directory: str | os.PathLike, version: str = "v1.2", seed: int = 0,
                                 shards: int = 2) -> Path:
    """Write a tiny model laid out as an official diffusers-format repository is released (``Step1X-Edit-v1p2``,
    ``-v1p1-diffusers``): ``model_index.json`` naming the official fork's classes, ``transformer/`` in the fork's
    config fields and tensor names split into ``shards`` files with their index, ``text_encoder/``, ``vae/``,
    ``scheduler/`` and ``processor/``."""
    from safetensors.torch import save_file

    from ..checkpoints.official_diffusers import fork_config_from_transformer, transformer_state_dict_to_fork
    from ..versions import get_version

    line = get_version(version)
    if line.layout != "diffusers":
        raise ValueError(f"{version} is not released in diffusers format")
    directory = Path(directory)
    pipe = tiny_pipeline(seed=seed, version=version)
    transformer_dir = directory / "transformer"
    transformer_dir.mkdir(parents=True, exist_ok=True)
    state = transformer_state_dict_to_fork(pipe.transformer)
    keys = sorted(state)
    weight_map = {}
    for index in range(shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[index::shards]
        save_file({key: state[key] for key in part}, transformer_dir / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    (transformer_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    fork_config = {"_class_name": "Step1XEditTransformer2DModel", "_diffusers_version": "0.36.0.dev0",
                   **fork_config_from_transformer(pipe.transformer.config)}
    (transformer_dir / "config.json").write_text(json.dumps(fork_config, indent=1))
    pipe.vae.save_pretrained(directory / "vae")
    pipe.text_encoder.save_pretrained(directory / "text_encoder")
    pipe.scheduler.save_pretrained(directory / "scheduler")
    pipe.processor.tokenizer.save_pretrained(directory / "processor")
    pipe.processor.image_processor.save_pretrained(directory / "processor")
    index = {"_class_name": line.pipeline_class, "_diffusers_version": "0.36.0.dev0",
             "processor": ["transformers", "Qwen2_5_VLProcessor"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
             "transformer": ["diffusers", "Step1XEditTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (directory / "model_index.json").write_text(json.dumps(index, indent=1))
    return directory
