"""Step1X-Edit transformer speed and memory on CPU (float32), and the peak memory of loading a checkpoint.

* Seconds per denoising step with classifier-free guidance (one forward on a batch of 2 over
  ``[text ; noisy ; reference]`` tokens, connector included) for the ``tiny`` and ``mid`` presets at a stated
  image size, plus each run's peak RSS (every measurement runs in its own subprocess).
* Streaming load: a random official-format DiT file of a larger size is written to a temporary directory and
  loaded with :func:`~step1x_edit.checkpoints.official.load_official_transformer` in a fresh subprocess; the
  peak RSS increase during the load is reported against the file size (target <= 1.2x).

    python benchmarks/bench_transformer.py --resolution 256 --text-length 640 --steps 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_step(preset: str, resolution: int, text_length: int, steps: int, threads: int) -> dict:
    import torch

    from step1x_edit.models.presets import build_transformer
    from step1x_edit.sampling import denoise, get_schedule, position_ids

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_transformer(preset).eval()
    latent = resolution // 8
    img_ids, txt_ids = position_ids(latent, latent, text_length, model.config.version)
    n = img_ids.shape[0] // 2
    states = torch.randn(2, text_length, model.config.mllm_hidden_size)
    mask = torch.ones(2, text_length, dtype=torch.long)

    def model_fn(tokens, t):
        return model(tokens, t, states, mask, img_ids, txt_ids)

    noisy, reference = torch.randn(1, n, 64), torch.randn(1, n, 64)
    marks = [0.0]
    with torch.no_grad():
        denoise(model_fn, noisy, reference, [1.0, 0.5], 6.0, 0.93)  # warm-up
        marks[0] = time.perf_counter()
        denoise(model_fn, noisy, reference, get_schedule(steps, n), 6.0, 0.93,
                callback=lambda *_: marks.append(time.perf_counter()))
    durations = sorted(b - a for a, b in zip(marks[:-1], marks[1:], strict=True))
    return {
        "preset": preset, "resolution": resolution, "text_tokens": text_length, "image_tokens": 2 * n,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": durations[len(durations) // 2], "fastest_step": durations[0],
        "peak_rss_mb": _rss_mb("VmHWM"), "threads": threads,
    }


def child_load(path: str, config: dict) -> dict:
    import torch

    from step1x_edit.checkpoints.official import load_official_transformer

    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    model = load_official_transformer(path, config=config, torch_dtype=torch.bfloat16)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # touch every weight: none may still be waiting in a file mapping
        checksum = sum(parameter.float().sum().item() for parameter in model.parameters())
    peak = _rss_mb("VmHWM")
    return {
        "load_seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak, "checksum": checksum,
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
    }


def write_checkpoint(directory: str, hidden: int, depth: int, single: int) -> tuple[str, dict]:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from safetensors.torch import save_file

    from step1x_edit.checkpoints.official import transformer_state_dict_to_official
    from step1x_edit.models.presets import build_transformer

    overrides = {
        "hidden_size": hidden, "num_heads": hidden // 128, "axes_dim": (16, 56, 56), "depth": depth,
        "depth_single_blocks": single, "context_in_dim": hidden, "mllm_hidden_size": hidden,
        "connector_num_heads": hidden // 128,
    }
    diffusers_logging.set_verbosity_error()  # the random model is cast whole; no float32 modules to keep
    model = build_transformer("mid", **overrides).to(torch.bfloat16)
    path = f"{directory}/step1x-edit-bench.safetensors"
    save_file(transformer_state_dict_to_official(model), path)
    return path, {"axes_dim": [16, 56, 56], "connector_num_heads": hidden // 128}


def _run_child(*arguments: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, *arguments], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--text-length", type=int, default=640, help="MLLM tokens (640 in the released model)")
    parser.add_argument("--steps", type=int, default=5, help="timed denoising steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=["tiny", "mid"], help="presets to time (none: load only)")
    parser.add_argument("--load-hidden", type=int, default=1024, help="hidden size of the checkpoint to load")
    parser.add_argument("--load-depth", type=int, nargs=2, default=[4, 8], help="double and single blocks")
    parser.add_argument("--child", choices=["step", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "step":
        print(json.dumps(child_step(args.preset, args.resolution, args.text_length, args.steps, args.threads)))
        return
    if args.child == "load":
        print(json.dumps(child_load(args.path, json.loads(args.config))))
        return

    common = ["--resolution", str(args.resolution), "--text-length", str(args.text_length),
              "--steps", str(args.steps), "--threads", str(args.threads)]
    for preset in args.presets:
        result = _run_child("--child", "step", "--preset", preset, *common)
        print(
            f"{preset:>5}: {result['parameters'] / 1e6:8.2f} M params, {args.resolution}x{args.resolution} px "
            f"({result['image_tokens']} image + {args.text_length} text tokens, CFG batch 2): "
            f"{result['seconds_per_step']:.3f} s/step (median; fastest {result['fastest_step']:.3f}), peak RSS {result['peak_rss_mb']:.0f} MiB "
            f"({result['threads']} threads)"
        )

    with tempfile.TemporaryDirectory() as directory:
        path, config = write_checkpoint(directory, args.load_hidden, *args.load_depth)
        file_mb = Path(path).stat().st_size / 2**20
        result = _run_child("--child", "load", "--path", path, "--config", json.dumps(config))
    increase = result["peak_rss_mb"] - result["rss_before_mb"]
    print(
        f" load: {file_mb:.0f} MiB bf16 file (hidden {args.load_hidden}, {args.load_depth[0]}+{args.load_depth[1]} "
        f"blocks) in {result['load_seconds']:.1f} s; peak RSS increase {increase:.0f} MiB = "
        f"{increase / file_mb:.2f}x the file size"
    )


if __name__ == "__main__":
    main()
