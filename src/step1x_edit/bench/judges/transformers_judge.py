"""A judge run in-process with transformers: any image-text-to-text model with a chat template (Qwen2.5-VL...).

The call follows the official Qwen2.5-VL judge: one user message whose content is the images followed by the
prompt text, greedy decoding, ``max_new_tokens`` 512; only the newly generated tokens are decoded.
"""

from __future__ import annotations

import threading

from PIL import Image

from .base import JudgeCallError


class TransformersJudge:
    """Judge with a loaded ``model`` (a ``generate``-capable VLM) and its ``processor``.

    ``name`` is recorded as the judge's model id (e.g. the checkpoint path or Hub id).
    """

    max_concurrency = 1

    def __init__(self, model, processor, name: str, max_new_tokens: int = 512):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.info = {"kind": "transformers", "model": name, "endpoint": "in-process"}
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path: str, device: str | None = None, torch_dtype=None, max_new_tokens: int = 512
    ) -> TransformersJudge:
        """Load a VLM and its processor from a local directory (``device_map="auto"`` when ``device`` is None)."""
        from transformers import AutoModelForImageTextToText

        from ...errors import CheckpointError

        try:
            processor = _load_processor(path)
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=torch_dtype or "auto", device_map=device or "auto", use_safetensors=True
            )
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot load a judge VLM from {path}: {error}") from error
        return cls(model.eval(), processor, name=str(path), max_new_tokens=max_new_tokens)

    def complete(self, prompt: str, images: list[Image.Image]) -> str:
        import torch

        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        with self._lock:
            try:
                inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
                inputs = inputs.to(self.model.device)
                with torch.inference_mode():
                    output = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
            except (RuntimeError, ValueError) as error:
                raise JudgeCallError(f"{type(error).__name__}: {error}") from error
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (1, generated)
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def _load_processor(path: str):
    """The folder's processor. Qwen2.5-VL's also builds a video processor, which needs torchvision; without it,
    the image-only variant is used (same tokenizer, image processor and chat template)."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2VLImageProcessorPil

    from ...errors import Step1XEditError

    try:
        return AutoProcessor.from_pretrained(path)
    except ImportError as error:
        if AutoConfig.from_pretrained(path).model_type != "qwen2_5_vl":
            raise Step1XEditError(
                f"the judge VLM in {path} needs a package that is not installed: {str(error).strip().splitlines()[0]}"
            ) from error
    from ...models.mllm import ImageOnlyQwen2_5_VLProcessor

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
