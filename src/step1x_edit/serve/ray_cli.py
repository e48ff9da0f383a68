"""The options of ``step1x-edit serve --engine ray`` (a light module: the CLI builds its parser without loading
Ray, the serving stack or torch); the engine itself is :mod:`step1x_edit.serve.ray_serve`."""

from __future__ import annotations

import argparse

from .. import validate
from ..data.limits import MAX_WORKERS
from ..errors import Step1XEditError

MAX_REPLICAS = 1024
MAX_BATCH_SIZE = 64
MAX_BATCH_WAIT_SECONDS = 10.0
RAY_FLAGS = ("--ray-address", "--replicas", "--min-replicas", "--max-replicas", "--gpus-per-replica",
             "--cpus-per-replica", "--max-batch-size", "--batch-wait-ms")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve``'s options for ``--engine ray``."""
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: one process, one pipeline (default); ray: Ray Serve replicas, each holding one "
                        "pipeline, with dynamic batching (the HTTP API only)")
    parser.add_argument("--ray-address", help="join this Ray cluster ('auto', ray://head:10001; default: a local Ray)")
    parser.add_argument("--replicas", type=validate.int_argument(1, MAX_REPLICAS),
                        help="replicas (default 1; or autoscale with --min-replicas and --max-replicas)")
    parser.add_argument("--min-replicas", type=validate.int_argument(0, MAX_REPLICAS),
                        help="autoscaling: fewest replicas (default 1)")
    parser.add_argument("--max-replicas", type=validate.int_argument(1, MAX_REPLICAS),
                        help="autoscaling: most replicas (required to autoscale; default: a fixed number)")
    parser.add_argument("--gpus-per-replica", type=validate.float_argument(0.0, 64.0),
                        help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-replica", type=validate.float_argument(0.0, MAX_WORKERS, low_open=True),
                        help="CPUs per replica (default 1)")
    parser.add_argument("--max-batch-size", type=validate.int_argument(1, MAX_BATCH_SIZE),
                        help="most requests a replica edits in one batch (default 4)")
    parser.add_argument("--batch-wait-ms", type=validate.float_argument(0.0, MAX_BATCH_WAIT_SECONDS * 1000),
                        help="how long a replica waits to fill a batch, in ms (default 50)")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse ``--engine ray`` options with the local engine, and the web UI with the Ray engine."""
    given = [flag for flag in RAY_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    if args.engine == "local" and given:
        raise Step1XEditError(f"{', '.join(given)} applies to --engine ray only")
    if args.engine == "ray" and not args.no_ui:
        raise Step1XEditError("--engine ray serves the HTTP API only; add --no-ui (the web UI runs with --engine "
                              "local)")
    if args.parallel != "none":
        raise Step1XEditError("--parallel applies to step1x-edit edit under torchrun; to serve on several GPUs, run "
                              "one replica per GPU (--engine ray --replicas N)")
