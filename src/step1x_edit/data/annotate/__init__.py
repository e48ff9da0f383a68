"""Model-backed operators: an MLLM annotator and verifier over any OpenAI-compatible endpoint, cheap triplet
filters, and detection / segmentation / inpainting behind small protocols."""
