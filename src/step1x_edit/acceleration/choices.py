"""The names each memory, speed and multi-GPU choice takes (light: the command line reads them at parse time)."""

MEMORY_MODES = ("auto", "full", "24gb", "16gb", "12gb")
# Where the big models live: "none" (all resident on the GPU), "model" (each whole model moved to the GPU while it
# runs: diffusers' enable_model_cpu_offload), "group" (blocks streamed to the GPU as they run, with CUDA streams and
# prefetch: diffusers' group offloading, on the DiT and the MLLM).
OFFLOADS = ("none", "model", "group")
# How the DiT's weights are stored: "auto" (the compute dtype) or "fp8" (float8_e4m3fn storage, computed in the
# compute dtype: diffusers' layerwise casting).
DIT_STORAGES = ("auto", "fp8")
# Weight quantization through the libraries: torchao int8 or float8 weight-only, bitsandbytes NF4.
QUANTIZATIONS = ("none", "int8", "fp8", "nf4")
# Step caching through diffusers' cache hooks (off by default).
CACHES = ("none", "first-block", "taylorseer")
PARALLELS = ("none", "cfg", "context")
