"""Bounds on batch editing's settings, apart from the engines so the command line can name them without loading
the pipeline."""

MAX_BATCH_SIZE = 1024  # samples in one pipeline call
MAX_GPUS_PER_ACTOR = 64
