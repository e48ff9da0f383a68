"""MLLM judges behind one interface: :class:`~.base.Judge` (prompt + images in, reply text out).

- :class:`~.openai_judge.OpenAIJudge`: any OpenAI-compatible chat-completions endpoint (GPT-4.1, or vLLM /
  SGLang serving Qwen2.5-VL-72B or another open VLM).
- :class:`~.transformers_judge.TransformersJudge`: a vision-language model run in-process with transformers.
"""

from .base import Judge, JudgeCallError, JudgeRefusal, JudgeUnavailable, UnusableReply

__all__ = ["Judge", "JudgeCallError", "JudgeRefusal", "JudgeUnavailable", "UnusableReply"]
