"""The HTTP API as a Ray Serve deployment: replicas that each hold one pipeline, behind Serve's proxy.

Every replica serves the app :func:`~step1x_edit.serve.http.create_app` builds (the same routes, errors, limits,
API key and host checks as ``step1x-edit serve``) over a :class:`BatchingEditService`: an
:class:`~step1x_edit.serve.service.EditService` whose edits go through Serve's dynamic batching
(``@serve.batch``), so requests that arrive together and share a working size and settings are edited in one
pipeline call. Each replica admits ``max_pending`` edit requests (more get the API's 503 with ``Retry-After``);
Serve spreads requests over the replicas, a fixed number or autoscaled between bounds.

- ``step1x-edit serve --engine ray --replicas 2`` starts it on a local Ray (or ``--ray-address`` a cluster);
- ``serve run examples/ray-serve.yaml`` (or ``serve deploy``) starts it from a Serve config file, whose ``args``
  go to :func:`build_app`.

Ray is imported only when a deployment is built, so this module loads without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .. import sampling, validate
from ..acceleration.options import acceleration_from_mapping
from ..batch.editor import DTYPES, ModelSpec
from ..batch.engines import connect_ray
from ..data.limits import MAX_WORKERS
from ..errors import Step1XEditError
from ..model_options import acceleration_from_args
from .http import LOOPBACK_HOSTS, create_app
from .ray_cli import MAX_BATCH_SIZE, MAX_BATCH_WAIT_SECONDS, MAX_REPLICAS
from .service import EditCancelledError, EditResult, EditService, ServeLimits

APP_NAME = "step1x-edit"
# Serve may route this many requests to a replica beyond its edit places: /health, /v1/models and the refusals.
EXTRA_ONGOING = 8
# Requests waiting in Serve's router for a replica, per edit place of one replica; past that, Serve itself answers
# 503 (the replicas refuse edits past their places with the API's own 503 long before).
QUEUED_PER_PLACE = 4
# The response header naming the replica that answered.
REPLICA_HEADER = b"x-replica"


@dataclass(frozen=True)
class ReplicaConfig:
    """What every replica builds: the ``model``, the request ``limits`` (``max_pending`` per replica), the model
    id ``name``, the ``api_key`` and ``allowed_hosts`` of the API, and the batching: at most ``max_batch_size``
    requests per batch, gathered for up to ``batch_wait_s`` seconds."""

    model: ModelSpec
    limits: ServeLimits = ServeLimits()
    name: str | None = None
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_batch_size: int = 4
    batch_wait_s: float = 0.05

    def __post_init__(self):
        validate.integer("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE)
        validate.number("batch_wait_s", self.batch_wait_s, 0.0, MAX_BATCH_WAIT_SECONDS)
        if self.api_key is not None:
            validate.text("the API key", self.api_key, 1024, allow_empty=False)


@dataclass(frozen=True)
class Scaling:
    """How many replicas: ``replicas`` fixed, or autoscaled from ``min_replicas`` to ``max_replicas`` (towards
    ``target_ongoing`` requests per replica); each replica on ``gpus`` GPUs (None: 1 when the cluster has GPUs)
    and ``cpus`` CPUs."""

    replicas: int | None = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing: float = 2.0
    gpus: float | None = None
    cpus: float = 1.0

    def __post_init__(self):
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if autoscaled and self.replicas is not None:
            raise Step1XEditError("give a number of replicas, or autoscaling bounds (min and max replicas), not both")
        if autoscaled:
            low = validate.integer("min_replicas", 1 if self.min_replicas is None else self.min_replicas, 0,
                                   MAX_REPLICAS)
            if self.max_replicas is None:
                raise Step1XEditError("autoscaling needs max_replicas")
            validate.integer("max_replicas", self.max_replicas, max(low, 1), MAX_REPLICAS)
        else:
            validate.integer("replicas", self.replicas, 1, MAX_REPLICAS)
        validate.number("target_ongoing", self.target_ongoing, 0.0, low_open=True)
        if self.gpus is not None:
            validate.number("gpus per replica", self.gpus, 0.0, 64.0)
        validate.number("cpus per replica", self.cpus, 0.0, MAX_WORKERS, low_open=True)

    def options(self, ray, max_pending: int) -> dict[str, Any]:
        """The deployment's options on the cluster ``ray`` is connected to."""
        gpus = self.gpus
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus, "num_gpus": gpus},
            "max_ongoing_requests": max_pending + EXTRA_ONGOING,
            "max_queued_requests": QUEUED_PER_PLACE * max_pending,
        }
        if self.replicas is not None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas or 0,
                                             "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing}
        return options


@dataclass(eq=False)
class _Request:
    """One request's share of a batch: its images (the source, once per image asked for), settings and seeds."""

    sources: list
    instructions: list[str]
    negative_prompt: str
    settings: dict
    seeds: list[int]
    cancelled: Any

    def group(self) -> tuple:
        """Requests with the same group can share a pipeline call: one working size, the same settings."""
        width, height = self.sources[0].size
        working_size = sampling.resize_dimensions(width, height, self.settings["size_level"])
        return (working_size, self.negative_prompt, *sorted(self.settings.items()))


class BatchingEditService(EditService):
    """An :class:`EditService` whose edits are gathered by Serve's dynamic batching (``@serve.batch``, at most
    ``max_batch_size`` requests waiting up to ``batch_wait_s``); the requests of a batch that share a working size
    and settings are edited in one pipeline call. A batch stops early only when every one of its clients has gone.
    Runs inside a Serve replica (Serve's batching needs one)."""

    def __init__(self, pipeline, limits: ServeLimits, name: str, max_batch_size: int, batch_wait_s: float):
        from ray import serve

        super().__init__(pipeline, limits, name=name)
        self._batched = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)(self._edit_batch)
        self._editor_thread = None  # the batches' own worker thread: the shared ones may all hold waiting requests

    def run(self, sources, instructions, negative_prompt, settings, seeds, cancelled=None) -> EditResult:
        # Called by edit() in a worker thread of the app's event loop: the batch queue lives on that loop.
        request = _Request(sources, instructions, negative_prompt, settings, seeds, cancelled)
        outcome = anyio.from_thread.run(self._batched, request)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _edit_batch(self, requests: list[_Request]) -> list[EditResult | BaseException]:
        outcomes: dict[int, EditResult | BaseException] = {}
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.group(), []).append(index)
        if self._editor_thread is None:
            self._editor_thread = anyio.CapacityLimiter(1)
        for members in groups.values():
            results = await anyio.to_thread.run_sync(self._edit_group, [requests[index] for index in members],
                                                     limiter=self._editor_thread)
            outcomes.update(zip(members, results, strict=True))
        return [outcomes[index] for index in range(len(requests))]

    def _edit_group(self, group: list[_Request]) -> list[EditResult | BaseException]:
        """One pipeline call for the requests of ``group`` whose clients are still there."""
        withdrawn = EditCancelledError("the request was withdrawn before its edit started")
        live = [request for request in group if request.cancelled is None or not request.cancelled()]
        if not live:
            return [withdrawn] * len(group)
        askers = [request.cancelled for request in live if request.cancelled is not None]
        everyone_gone = (lambda: all(asked() for asked in askers)) if len(askers) == len(live) else None
        first = live[0]
        try:
            result = EditService.run(self, [source for request in live for source in request.sources],
                                     [text for request in live for text in request.instructions],
                                     first.negative_prompt, first.settings,
                                     [seed for request in live for seed in request.seeds], everyone_gone)
        except Exception as error:  # every request of the call gets the call's error (the API maps it to a status)
            return [error if request in live else withdrawn for request in group]
        outcomes, start = [], 0
        for request in group:
            if request not in live:
                outcomes.append(withdrawn)
                continue
            count = len(request.sources)
            mine = slice(start, start + count)
            outcomes.append(dataclasses.replace(result, images=result.images[mine], seeds=request.seeds,
                                                reasoning=None if result.reasoning is None else result.reasoning[mine]))
            start += count
        return outcomes


class ReplicaApp:
    """The ASGI app of one replica: when the replica starts (the ASGI lifespan), it loads the pipeline and builds
    the HTTP API over it with :func:`create_app`; every response names the replica in ``X-Replica``."""

    def __init__(self, config: ReplicaConfig):
        self.config = config
        self.app = None
        self.replica = b""

    def build(self) -> None:
        from ray import serve

        config = self.config
        service = BatchingEditService(config.model.load(), config.limits, config.name or config.model.model_id,
                                      config.max_batch_size, config.batch_wait_s)
        self.app = create_app(service, api_key=config.api_key, allowed_hosts=config.allowed_hosts)
        self.replica = str(serve.get_replica_context().replica_tag).encode("ascii", "replace")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, named)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await anyio.to_thread.run_sync(self.build)
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": f"{type(error).__name__}: {error}"})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def deployment(config: ReplicaConfig, scaling: Scaling, ray):
    """The Serve application: replicas of :class:`ReplicaApp` for ``config``, scaled as ``scaling`` says."""
    from ray import serve

    replica = serve.deployment(serve.ingress(ReplicaApp(config))(), name="EditReplica")
    return replica.options(**scaling.options(ray, config.limits.max_pending)).bind()


# The keys a Serve config file's ``args`` may hold (see examples/ray-serve.yaml), with their types.
BUILD_ARGS = {
    "model": str, "version": str, "device": str, "dtype": str, "name": str,
    "replicas": int, "min_replicas": int, "max_replicas": int, "target_ongoing_requests": (int, float),
    "gpus_per_replica": (int, float), "cpus_per_replica": (int, float),
    "max_pending": int, "max_steps": int, "max_size_level": int, "max_images": int, "max_upload_mb": (int, float),
    "max_edit_seconds": (int, float), "max_batch_size": int, "batch_wait_s": (int, float),
    "api_key_env": str, "allowed_hosts": list,
}


def build_app(args: dict[str, Any]):
    """The application a Serve config file describes (``import_path: step1x_edit.serve.ray_serve:build_app``);
    its ``args`` are :data:`BUILD_ARGS`, each checked (an unknown or mistyped key is an error naming it). The API
    key is read from the environment variable ``api_key_env`` names; without it the API is open."""
    import ray

    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise Step1XEditError(f"unknown Ray Serve args {unknown}; the args are {', '.join(BUILD_ARGS)}")
    for key, value in args.items():
        if isinstance(value, bool) or not isinstance(value, BUILD_ARGS[key]):
            raise Step1XEditError(f"Ray Serve arg {key} has the wrong type ({type(value).__name__})")
    if "dtype" in args and args["dtype"] not in DTYPES:
        raise Step1XEditError(f"dtype must be one of {', '.join(DTYPES)}, got {args['dtype']!r}")
    api_key = None
    if "api_key_env" in args:
        api_key = os.environ.get(args["api_key_env"])
        if not api_key:
            raise Step1XEditError(f"the environment variable {args['api_key_env']} (api_key_env) is not set")
    hosts = args.get("allowed_hosts", list(LOOPBACK_HOSTS))
    if not all(isinstance(host, str) for host in hosts):
        raise Step1XEditError("allowed_hosts must be a list of host names")
    limit_args = {"max_pending": "max_pending", "max_steps": "max_steps", "max_size_level": "max_size_level",
                  "max_images": "max_images", "max_edit_seconds": "max_seconds"}
    limits = ServeLimits(**{field: args[key] for key, field in limit_args.items() if key in args},
                         **({"max_upload_bytes": int(args["max_upload_mb"] * 1024 * 1024)}
                            if "max_upload_mb" in args else {}))
    model = ModelSpec(model=args.get("model"), version=args.get("version"), device=args.get("device"),
                      dtype=args.get("dtype"), name=args.get("name"),
                      acceleration=acceleration_from_mapping(args.get("acceleration", {}), "acceleration"))
    config = ReplicaConfig(model, limits, name=args.get("name"), api_key=api_key, allowed_hosts=tuple(hosts),
                           max_batch_size=args.get("max_batch_size", 4), batch_wait_s=args.get("batch_wait_s", 0.05))
    autoscaled = "min_replicas" in args or "max_replicas" in args
    scaling = Scaling(replicas=None if autoscaled else args.get("replicas", 1), min_replicas=args.get("min_replicas"),
                      max_replicas=args.get("max_replicas"),
                      target_ongoing=args.get("target_ongoing_requests", 2.0),
                      gpus=args.get("gpus_per_replica"), cpus=args.get("cpus_per_replica", 1.0))
    return deployment(config, scaling, ray)


def serve_on_ray(args: argparse.Namespace, limits: ServeLimits, api_key: str | None, allowed_hosts: Sequence[str],
                 lora_scales: list[float], dtype: str | None) -> int:
    """Run ``step1x-edit serve --engine ray`` until interrupted."""
    model = ModelSpec(model=args.model, version=args.version, device=args.device, dtype=dtype,
                      loras=tuple(zip(args.lora, lora_scales, strict=True)), name=args.name,
                      attn_implementation=args.attn_implementation, acceleration=acceleration_from_args(args))
    model.check()
    autoscaled = args.min_replicas is not None or args.max_replicas is not None
    scaling = Scaling(replicas=None if autoscaled else (args.replicas or 1), min_replicas=args.min_replicas,
                      max_replicas=args.max_replicas, gpus=args.gpus_per_replica, cpus=args.cpus_per_replica or 1.0)
    config = ReplicaConfig(model, limits, name=args.name, api_key=api_key, allowed_hosts=tuple(allowed_hosts),
                           max_batch_size=args.max_batch_size or 4,
                           batch_wait_s=(0.05 if args.batch_wait_ms is None else args.batch_wait_ms / 1000))
    ray = connect_ray(args.ray_address)
    from ray import serve

    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(deployment(config, scaling, ray), name=APP_NAME, route_prefix="/")
    count = (f"{scaling.replicas} replica(s)" if scaling.replicas is not None
             else f"{scaling.min_replicas or 0} to {scaling.max_replicas} replicas")
    print(f"serving {model.model_id} with Ray Serve ({count}) at http://{args.host}:{args.port}: HTTP API at /v1/edit "
          "and /v1/images/edits, its docs at /docs" + ("" if api_key else "; no API key: anyone who can reach the "
                                                      "port can use it") + "; Ctrl+C stops it", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    finally:
        serve.shutdown()
