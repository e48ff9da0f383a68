"""Bounds on the data engine's settings, shared by the API checks and the ``data`` CLI flags.

A light module (no imports) so that the CLI can build its parser without loading the engine.
"""

# Samples in one synthetic run (the plan of per-sample seeds is held in memory).
MAX_COUNT = 10_000_000
# Image sides in pixels: the synthetic resolution range and the example images.
MIN_SIDE, MAX_SIDE = 64, 4096
# The widest synthetic aspect ratio (width / height); 1 / it is the tallest.
MAX_ASPECT = 10.0
# The longest side a photo is shrunk to, and the largest minimum side a filter may demand.
MAX_PHOTO_SIDE = 16384
# Samples in one Parquet shard, and in one exported WebDataset tar.
MAX_SHARD_SIZE = 100_000
MAX_SAMPLES_PER_SHARD = 1_000_000
# Worker processes of the local executor, CPUs given to a local Ray, and actors of a model stage.
MAX_WORKERS = 1024
# Samples on one contact sheet.
MAX_SHEET_SAMPLES = 300
# MLLM calls: requests in flight per worker, seconds per request, retries per request.
MAX_CONCURRENCY = 256
MAX_TIMEOUT = 3600.0
MAX_RETRIES = 100
