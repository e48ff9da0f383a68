"""HTTP API speed: what serving adds to an edit, and throughput under concurrent clients.

Starts ``step1x-edit serve``'s app (API only) with uvicorn on a free local port, then measures:

* ``direct``: the edit service called in-process (the model's own time per edit);
* ``http, 1 client``: the same edits as ``POST /v1/edit`` requests one after another (upload, decode, edit, PNG
  encode, response), and the overhead over ``direct``;
* ``http, N clients``: N clients sending at once: requests per second, latency percentiles (queueing included,
  since the server runs one edit at a time) and how many were refused with 503 (more than ``--max-pending``).

    python benchmarks/bench_serve.py --requests 40 --clients 4
    python benchmarks/bench_serve.py --model ~/models/step1x-edit --size-level 512 --requests 8 --clients 2
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from step1x_edit.pipeline import load_pipeline
from step1x_edit.serve.http import create_app
from step1x_edit.serve.service import EditService, ServeLimits

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: the built-in demo model)")
    parser.add_argument("--image", default=str(EXAMPLE))
    parser.add_argument("--instruction", default="Make the red circle green.")
    parser.add_argument("--size-level", type=int, default=None, help="default: the model's own")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's own")
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the last measurement")
    parser.add_argument("--max-pending", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    service = EditService(load_pipeline(args.model), ServeLimits(max_pending=args.max_pending))
    image = Path(args.image).read_bytes()
    fields = {"instruction": args.instruction, "seed": "0"}
    settings = {}
    if args.size_level is not None:
        fields["size_level"], settings["size_level"] = str(args.size_level), args.size_level
    if args.steps is not None:
        fields["num_inference_steps"], settings["num_inference_steps"] = str(args.steps), args.steps

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/edit"

    def request(client: httpx.Client) -> tuple[float, int]:
        start = time.perf_counter()
        response = client.post(url, data=fields, files={"image": ("image.png", image, "image/png")}, timeout=600)
        return time.perf_counter() - start, response.status_code

    try:
        service.edit(image, args.instruction, seed=0, **settings)  # warm-up
        direct = []
        for _ in range(args.requests):
            start = time.perf_counter()
            service.edit(image, args.instruction, seed=0, **settings)
            direct.append(time.perf_counter() - start)
        with httpx.Client() as client:
            request(client)  # warm-up
            sequential = [request(client) for _ in range(args.requests)]
        clients = [httpx.Client() for _ in range(args.clients)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            concurrent = list(pool.map(lambda index: request(clients[index % args.clients]), range(args.requests)))
        wall = time.perf_counter() - start
        for client in clients:
            client.close()
    finally:
        server.should_exit = True
        thread.join(10)

    sequential_times = [seconds for seconds, status in sequential if status == 200]
    served = [seconds for seconds, status in concurrent if status == 200]
    figures = {
        "direct_median_s": statistics.median(direct),
        "http_median_s": statistics.median(sequential_times),
        "http_overhead_ms": 1000 * (statistics.median(sequential_times) - statistics.median(direct)),
        "clients": args.clients,
        "concurrent_requests_per_s": len(served) / wall,
        "concurrent_p50_s": _percentile(served, 0.5) if served else None,
        "concurrent_p95_s": _percentile(served, 0.95) if served else None,
        "refused_503": sum(status == 503 for _, status in concurrent),
        "failed_other": sum(status not in (200, 503) for _, status in concurrent + sequential),
    }
    print(f"direct edit, median           {figures['direct_median_s'] * 1000:8.1f} ms")
    print(f"HTTP, 1 client, median        {figures['http_median_s'] * 1000:8.1f} ms "
          f"(+{figures['http_overhead_ms']:.1f} ms for the API)")
    if served:
        print(f"HTTP, {args.clients} clients                {figures['concurrent_requests_per_s']:8.2f} requests/s, "
              f"p50 {figures['concurrent_p50_s'] * 1000:.1f} ms, p95 {figures['concurrent_p95_s'] * 1000:.1f} ms")
    print(f"refused (503): {figures['refused_503']}, other failures: {figures['failed_other']}")
    if args.json:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
