"""GEdit-Bench harness overhead: judging throughput against a local OpenAI-compatible server, and statistics time.

The server answers every request after a fixed latency (a stand-in for a real judge), so the numbers show how
much of a judging run is the harness (image preparation, JPEG encoding, HTTP, parsing) and how concurrency
hides latency. Run: ``python benchmarks/bench_gedit.py [--samples 48] [--latency 0.2]``.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from step1x_edit.bench.dataset import TASK_TYPES, load_gedit
from step1x_edit.bench.generate import generate
from step1x_edit.bench.judges.openai_judge import OpenAIJudge
from step1x_edit.bench.judging import RetryPolicy, judge_results
from step1x_edit.bench.stats import compute_statistics, read_scores


def serve(latency: float) -> ThreadingHTTPServer:
    reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                                                          "content": '{"score": [7, 8], "reasoning": "ok"}'}}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def tiny_copy(root: Path, samples: int) -> None:
    """A GEdit-format copy with ``samples`` English rows of 416x672 sources (the benchmark's typical size)."""
    def png(size):
        buffer = io.BytesIO()
        Image.effect_noise(size, 40).convert("RGB").save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    source, raw = png((416, 672)), png((832, 1344))
    rows = [{"key": f"k{i:05d}", "task_type": TASK_TYPES[i % len(TASK_TYPES)], "instruction": f"edit {i}",
             "instruction_language": "en", "input_image": source, "input_image_raw": raw, "Intersection_exist": True}
            for i in range(samples)]
    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "train.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.2, help="simulated judge latency per call (s)")
    parser.add_argument("--fixture", default=str(Path(__file__).parents[2] / "shared/fixtures/gedit/gedit_samples.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_copy(tmp / "bench", args.samples)
        samples = load_gedit(tmp / "bench", allow_partial=True)
        generate(samples, lambda image, instruction, seed: image.resize((832, 1344)), tmp / "results" / "m",
                 shard=(0, 1), progress=False)
        server = serve(args.latency)
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        print(f"judging {len(samples)} samples (2 calls each), simulated latency {args.latency * 1000:.0f} ms/call")
        for concurrency in (1, 4, 16):
            judge = OpenAIJudge(model="m", base_url=url, api_key="k", concurrency=concurrency)
            start = time.perf_counter()
            judge_results(samples, tmp / "results" / "m", judge, tmp / f"scores{concurrency}.jsonl",
                          policy=RetryPolicy(attempts=1), progress=False)
            elapsed = time.perf_counter() - start
            overhead = elapsed / len(samples) - 2 * args.latency / concurrency
            print(f"  concurrency {concurrency:2d}: {elapsed:6.2f} s, {len(samples) / elapsed:6.1f} samples/s, "
                  f"harness overhead about {overhead * 1000:5.1f} ms/sample")
        server.shutdown()
    if Path(args.fixture).is_file():
        records = read_scores(args.fixture)
        for bootstrap in (0, 1000):
            start = time.perf_counter()
            compute_statistics(records, bootstrap=bootstrap)
            print(f"statistics of {len(records)} judgements, {bootstrap} bootstrap resamples: "
                  f"{(time.perf_counter() - start) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
