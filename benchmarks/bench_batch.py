"""Scale-out speed: batch editing with the local and the Ray engine, and the HTTP API on Ray Serve replicas.

Builds random-weight models of the ``tiny`` and ``mid`` presets (saved to a temporary folder, as a user's model
would be), then measures, in one run on this machine:

* ``edit-batch``: images per second of :func:`step1x_edit.batch.edit_batch` over the same samples with the local
  engine, and with the Ray engine at 1 actor (given all CPUs, like the local engine) and 2 actors (half each);
  the whole call is timed (model loading and Ray's actor start-up included, Ray's own start excluded), and Ray's
  overhead is the local rate over the 1-actor rate;
* ``serve``: requests per second and latency with ``--clients`` clients sending edits at once, to the
  single-process server (uvicorn) and to Ray Serve with 1 and 2 replicas.

    python benchmarks/bench_batch.py                       # both presets, 12 samples, 4 clients
    python benchmarks/bench_batch.py --presets tiny --samples 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from step1x_edit.batch import LocalEngine, ModelSpec, RayEngine, Settings, edit_batch
from step1x_edit.pipeline import SCHEDULER_CONFIG, Step1XEditPipeline, load_pipeline
from step1x_edit.serve.service import ServeLimits

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
INSTRUCTIONS = ["Make the red circle green.", "Make the background blue.", "Remove the star.", "Make it night."]
# What each preset edits at: working size, steps (guidance on: two model calls per step).
SETTINGS = {"tiny": {"size_level": 128, "num_inference_steps": 4}, "mid": {"size_level": 96, "num_inference_steps": 2}}


def build_model(preset: str, directory: Path) -> Path:
    """A random-weight model of ``preset`` (the tiny MLLM with it) in the diffusers layout at ``directory``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from step1x_edit.models.presets import build_transformer, build_vae
    from step1x_edit.testing.tiny import tiny_processor, tiny_text_encoder

    torch.manual_seed(0)
    text_encoder = tiny_text_encoder()
    transformer = build_transformer(preset, mllm_hidden_size=text_encoder.config.text_config.hidden_size)
    pipe = Step1XEditPipeline(transformer.eval(), build_vae(preset).eval(), text_encoder, tiny_processor(),
                              FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                              default_size_level=SETTINGS[preset]["size_level"],
                              default_num_inference_steps=SETTINGS[preset]["num_inference_steps"])
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def write_samples(folder: Path, count: int) -> Path:
    images = sorted(EXAMPLES.glob("*.png"))
    for image in images:
        shutil.copy(image, folder / image.name)
    rows = [{"image": images[index % len(images)].name, "instruction": INSTRUCTIONS[index % len(INSTRUCTIONS)]}
            for index in range(count)]
    path = folder / "samples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def time_batch(samples: Path, out: Path, model: ModelSpec, engine, shard_size: int) -> float:
    """Images per second of one edit_batch call into a fresh store."""
    start = time.perf_counter()
    summary = edit_batch(samples, out, model=model, settings=Settings(), engine=engine, shard_size=shard_size,
                         progress=False)
    seconds = time.perf_counter() - start
    assert summary.failed == 0, summary.failures
    return summary.processed / seconds


def time_server(url: str, clients: int, requests: int) -> dict:
    """``requests`` edits from ``clients`` clients at once: requests per second, latency median and 90th percentile."""
    image = (EXAMPLES / "shapes.png").read_bytes()
    latencies, statuses = [], []
    lock = threading.Lock()

    def one(index: int) -> None:
        start = time.perf_counter()
        response = httpx.post(f"{url}/v1/edit", files={"image": ("a.png", image, "image/png")},
                              data={"instruction": INSTRUCTIONS[index % len(INSTRUCTIONS)], "seed": str(index)},
                              timeout=600)
        with lock:
            latencies.append(time.perf_counter() - start)
            statuses.append(response.status_code)

    httpx.post(f"{url}/v1/edit", files={"image": ("a.png", image, "image/png")},
               data={"instruction": INSTRUCTIONS[0]}, timeout=600).raise_for_status()  # warm up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"per_second": requests / seconds, "median_s": statistics.median(ordered),
            "p90_s": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
            "refused": sum(status == 503 for status in statuses), "ok": sum(status == 200 for status in statuses)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_server(model_dir: Path):
    """The single-process server (uvicorn in a thread) over ``model_dir``; returns (url, stop)."""
    import uvicorn

    from step1x_edit.serve.http import create_app
    from step1x_edit.serve.service import EditService

    port = _free_port()
    service = EditService(load_pipeline(model_dir, device="cpu"), ServeLimits(max_pending=64), name="bench")
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join()

    return f"http://127.0.0.1:{port}", stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["tiny", "mid"], choices=sorted(SETTINGS))
    parser.add_argument("--samples", type=int, default=12, help="samples per batch measurement")
    parser.add_argument("--shard-size", type=int, default=4, help="samples per shard (a Ray actor's unit of work)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the server")
    parser.add_argument("--requests", type=int, default=12, help="requests per server measurement")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    import ray
    from ray import serve

    from step1x_edit.serve.ray_serve import ReplicaConfig, Scaling, deployment

    cpus = os.cpu_count() or 1
    print(f"CPU: {cpus} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), ray {ray.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        samples = write_samples(work, args.samples)
        for preset in args.presets:
            model_dir = build_model(preset, work / f"model-{preset}")
            model = ModelSpec(str(model_dir), device="cpu")
            rows = {}
            engines = {"local": LocalEngine(), "ray, 1 actor": RayEngine(actors=1, cpus_per_actor=cpus),
                       "ray, 2 actors": RayEngine(actors=2, cpus_per_actor=cpus / 2)}
            for name, engine in engines.items():
                rows[name] = time_batch(samples, work / f"out-{preset}-{len(rows)}", model, engine, args.shard_size)
                print(f"edit-batch  {preset:4s}  {name:14s}  {rows[name]:7.2f} img/s", flush=True)
            rows["ray overhead (local / ray 1 actor)"] = rows["local"] / rows["ray, 1 actor"]
            print(f"edit-batch  {preset:4s}  Ray's overhead: local is {rows['ray overhead (local / ray 1 actor)']:.2f}x "
                  "the 1-actor Ray rate")
            url, stop = local_server(model_dir)
            servers = {"local server": time_server(url, args.clients, args.requests)}
            stop()
            ray.shutdown()  # a fresh Ray: Ray Data keeps its finished actor pools (and their CPUs) until then
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for replicas in (1, 2):
                config = ReplicaConfig(model, ServeLimits(max_pending=64), name="bench")
                serve.run(deployment(config, Scaling(replicas=replicas, cpus=cpus / replicas), ray), name="bench",
                          route_prefix="/")
                servers[f"ray serve, {replicas} replica(s)"] = time_server(f"http://127.0.0.1:{port}", args.clients,
                                                                           args.requests)
                serve.delete("bench")  # its CPUs free for the next deployment (an update would hold both at once)
            serve.shutdown()
            for name, result in servers.items():
                print(f"serve       {preset:4s}  {name:24s}  {result['per_second']:6.2f} req/s  median "
                      f"{result['median_s']:.2f} s  p90 {result['p90_s']:.2f} s  ({result['ok']} ok, "
                      f"{result['refused']} refused, {args.clients} clients)")
            figures[preset] = {"edit-batch img/s": rows, "serve": servers}
    ray.shutdown()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
