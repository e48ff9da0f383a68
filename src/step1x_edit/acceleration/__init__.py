"""How a pipeline runs on the hardware: memory modes (offloading, fp8 weight storage, quantization, VAE tiling),
speed modes (regional compilation, attention backends, step caching) and multi-GPU (CFG-parallel, context
parallelism), all on diffusers', transformers' and the quantization libraries' machinery.

One choice of all of them is an :class:`~step1x_edit.acceleration.options.Acceleration`;
:func:`~step1x_edit.acceleration.options.apply_acceleration` applies it to a loaded pipeline and says what it
did. See ``docs/performance.md``.
"""
