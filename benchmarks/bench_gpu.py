"""Step1X-Edit speed and memory per acceleration mode on a GPU: one table row per memory or speed mode.

The pipeline is the full-size one (Qwen2.5-VL-7B, the ``full`` DiT, the FLUX VAE) with random weights, built on the
GPU in seconds (:func:`step1x_edit.testing.random_models.random_pipeline`; speed and memory do not depend on the
values), or real weights with ``--model DIR`` (:func:`step1x_edit.pipeline.load_pipeline`). Every mode
(:data:`MODES`, an :class:`~step1x_edit.acceleration.options.Acceleration` applied with
:func:`~step1x_edit.acceleration.options.apply_acceleration`) runs in a fresh child process, so its peak memory and
compile state are its own and a crash or out-of-memory error becomes that row's error. Each row reports:

* seconds per image for each ``--resolutions`` (one warm-up edit of 2 steps first, then one timed edit of
  ``--steps`` steps at guidance ``--guidance``, decode included) and the DiT's seconds per step (median);
* the MLLM's encode time (instruction and empty negative, at the largest resolution);
* peak GPU memory, allocated and reserved, over the whole child (loading included), and the bytes of parameters
  resident on the GPU after setup;
* load time (build or load, plus applying the mode) and the first (warm-up, compiling) edit's time;
* the transformer output's relative error (max |a - b| / max |b|) against the ``eager`` row on one fixed input,
  and, the edited images' PSNR against the ``eager`` row's (the same inputs and noise; meaningful with ``--model``
  only: random weights edit into noise).

A mode is *lossless* when the DiT and the MLLM keep every weight in bfloat16 and no step cache runs. The targets
(bf16 eager <= 22 s per 1024² edit; a mode within 18 GiB peak reserved at <= 25 s, one within 12 GiB; the fastest
lossless mode >= 1.5x eager; with caching >= 2.5x) are checked under the table. Caching decisions depend on the
weights, so caching speedups count only with ``--model``.

Rows are appended to ``--out`` as each mode finishes; a rerun with the same settings skips the recorded rows (delete a
row, or use another ``--out``, to measure it again). ``--budget-seconds`` stops starting modes (and stops a running
one) when the time is spent; what was not measured runs on the next call.

    python benchmarks/bench_gpu.py --out gpu.json --markdown gpu.md --budget-seconds 420
    python benchmarks/bench_gpu.py --model /models/Step1X-Edit --modes eager,cache,compile+cache --out real.json
    python benchmarks/bench_gpu.py --device cpu --preset mid --resolution 256 --steps 2 --modes eager,compile
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The fixed input of every timed edit (an example image and its instruction from examples/examples.json).
EXAMPLE_INDEX = 1
# Steps of the warm-up edit that precedes each timed one (compilation, kernel selection, allocator growth).
WARMUP_STEPS = 2
GIB = 2**30

# Mode name -> the Acceleration fields it sets (the rest keep their defaults: memory "full", bf16, eager), in the
# order "all" runs them: the baseline and the modes the targets need first.
MODES: dict[str, dict] = {
    "eager": {},
    "compile": {"compile": True},
    "16gb": {"memory": "16gb"},
    "12gb": {"memory": "12gb"},
    "fp8-storage": {"dit_storage": "fp8"},
    "24gb": {"memory": "24gb"},
    "compile+fp8": {"compile": True, "dit_storage": "fp8"},
    "int8": {"quantize_dit": "int8"},
    "nf4": {"quantize_dit": "nf4", "quantize_mllm": "nf4"},
    "cache": {"cache": "first-block"},
    "compile+cache": {"compile": True, "cache": "first-block"},
}
BASELINE = "eager"
# The targets checked under the table (seconds per 1024² edit, GiB of peak reserved GPU memory, speedups).
EAGER_SECONDS = 22.0
SMALL_MEMORY = (18.0, 25.0)  # GiB, seconds
SMALLEST_MEMORY = 12.0
LOSSLESS_SPEEDUP = 1.5
CACHE_SPEEDUP = 2.5
TARGET_RESOLUTION = 1024


# ---------------------------------------------------------------------------------------------- child: one mode
def _say(mode: str, message: str) -> None:
    print(f"    {mode}: {message}", flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("VmHWM not in /proc/self/status (Linux only)")


def _resident_bytes(pipe, device) -> int:
    """Bytes of the pipeline's weights (parameters and buffers, quantized ones as stored) on ``device``."""
    import torch

    from step1x_edit.acceleration.memory import parameter_bytes

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return sum(parameter_bytes(module, device) for module in (pipe.transformer, pipe.text_encoder, pipe.vae))


def _is_lossless(pipe, acceleration, dtype) -> bool:
    """No step cache and every DiT and MLLM weight a plain tensor of the compute dtype (no fp8 storage, no
    quantization)."""
    import torch

    if acceleration.cache != "none":
        return False
    return all(type(parameter.data) is torch.Tensor and parameter.dtype == dtype
               for module in (pipe.transformer, pipe.text_encoder) for parameter in module.parameters())


def _builds_on_device(acceleration) -> bool:
    """Whether the mode keeps every weight resident in the compute dtype: then the random pipeline is built on the
    GPU directly (what :func:`apply_acceleration` would move there); otherwise it is built on the CPU, as the
    loader leaves it, and the mode changes formats and places weights (so the peak memory is the mode's own)."""
    return (acceleration.memory == "full" and acceleration.offload in (None, "none")
            and acceleration.dit_storage in (None, "auto")
            and {acceleration.quantize_dit, acceleration.quantize_mllm} <= {None, "none"})


def _transformer_output(pipe, resolution: int, seed: int):
    """The DiT's output [2, 2N, 64] (float32, CPU) on one fixed batch-2 input at ``resolution``: random tokens, times
    0.7 and 0.3, a random condition of the pipeline's condition length (the first 300 positions valid)."""
    import torch

    from step1x_edit import sampling

    transformer, device = pipe.transformer, pipe._execution_device
    config, length = transformer.config, pipe.config.max_sequence_length
    generator = torch.Generator().manual_seed(seed)
    latent = resolution // 8
    img_ids, txt_ids = sampling.position_ids(latent, latent, length, config.version)
    inputs = {
        "hidden_states": torch.randn(2, img_ids.shape[0], config.in_channels, generator=generator),
        "timestep": torch.tensor([0.7, 0.3]),
        "encoder_hidden_states": torch.randn(2, length, config.mllm_hidden_size, generator=generator),
        "encoder_attention_mask": (torch.arange(length) < min(300, length)).long().expand(2, length),
        "img_ids": img_ids, "txt_ids": txt_ids,
    }
    if transformer.text_token_mapping is not None:  # v1.2 models also read the MLLM's input embeddings
        inputs["text_embeddings"] = torch.randn(2, length, config.mllm_hidden_size, generator=generator)
        inputs["text_mask"] = torch.zeros(2, length, dtype=torch.long)
    dtype = transformer.dtype
    inputs = {key: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
              for key, value in inputs.items()}
    with torch.no_grad():
        if getattr(transformer, "is_cache_enabled", False):  # diffusers' cache hooks run inside a named context
            transformer._reset_stateful_cache()
            with transformer.cache_context("cond"):
                output = transformer(**inputs)
        else:
            output = transformer(**inputs)
    return output.float().cpu()


def _edit(pipe, source, prompt: str, resolution: int, steps: int, args: argparse.Namespace, device):
    """One edit of ``steps`` steps at ``resolution``, the noise drawn from ``args.seed``: (seconds, the seconds of
    each step, the image [1, 3, H, W] in [0, 1] at the working size)."""
    import torch

    marks: list[float] = []

    def on_step(_pipe, _index, _timestep, _tensors):
        _sync(device)
        marks.append(time.perf_counter())
        return {}

    _sync(device)
    began = time.perf_counter()
    image = pipe(source, prompt, num_inference_steps=steps, guidance_scale=args.guidance, size_level=resolution,
                 output_type="pt", generator=torch.Generator().manual_seed(args.seed),
                 callback_on_step_end=on_step).images
    _sync(device)
    step_seconds = [later - earlier for earlier, later in zip([began, *marks[:-1]], marks, strict=True)]
    return time.perf_counter() - began, step_seconds, image


def run_mode(args: argparse.Namespace) -> dict:
    """Set up the pipeline for ``args.child`` and measure it; the row (without the comparisons with the baseline)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from step1x_edit.acceleration.options import Acceleration
    from step1x_edit.errors import Step1XEditError
    from step1x_edit.pipeline import resolve_device

    mode, outputs = args.child, args.outputs
    device, dtype = resolve_device(args.device), torch.bfloat16
    acceleration = Acceleration(**MODES[mode])
    row: dict = {"mode": mode, "acceleration": MODES[mode]}
    example = json.loads((EXAMPLES / "examples.json").read_text())[EXAMPLE_INDEX]
    source = Image.open(EXAMPLES.parent / example["path"]).convert("RGB")
    prompt = example["instruction_en"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    start = time.perf_counter()
    try:
        if args.model:
            from step1x_edit.pipeline import load_pipeline

            pipe = load_pipeline(args.model, device, dtype, acceleration=acceleration)
            row["applied"] = pipe.acceleration_notes
        else:
            from step1x_edit.acceleration.options import apply_acceleration
            from step1x_edit.testing.random_models import random_pipeline

            build_device = device if _builds_on_device(acceleration) else torch.device("cpu")
            pipe = random_pipeline(args.preset, build_device, dtype, seed=args.seed)
            _sync(device)
            row["build_seconds"] = time.perf_counter() - start
            row["applied"] = apply_acceleration(pipe, acceleration, device)
    except (Step1XEditError, ImportError) as error:  # a mode this machine, its packages or the model cannot run
        row["error"] = f"{type(error).__name__}: {error}"
        return row
    _sync(device)
    row["load_seconds"] = time.perf_counter() - start
    row["resident_parameter_bytes"] = _resident_bytes(pipe, device)
    row["allocated_after_setup_bytes"] = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    row["lossless"] = _is_lossless(pipe, acceleration, dtype)
    pipe.set_progress_bar_config(disable=True)
    _say(mode, f"ready in {row['load_seconds']:.1f} s ({row['resident_parameter_bytes'] / GIB:.1f} GiB of weights "
               f"on {device.type}); " + "; ".join(row["applied"] or ["nothing applied"]))

    row["seconds_per_image"], row["dit_seconds_per_step"], row["warmup_seconds"] = {}, {}, {}
    for resolution in args.resolutions:
        row["warmup_seconds"][resolution], _, _ = _edit(pipe, source, prompt, resolution,
                                                        min(WARMUP_STEPS, args.steps), args, device)
        seconds, steps, image = _edit(pipe, source, prompt, resolution, args.steps, args, device)
        row["seconds_per_image"][resolution] = seconds
        row["dit_seconds_per_step"][resolution] = statistics.median(steps[1:] or steps)
        pixels = (image[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)  # [H, W, 3]
        Image.fromarray(pixels).save(outputs / f"{_file_name(mode)}-{resolution}.png")
        _say(mode, f"{resolution}²: {seconds:.2f} s/image, DiT {row['dit_seconds_per_step'][resolution]:.3f} s/step "
                   f"(warm-up edit {row['warmup_seconds'][resolution]:.1f} s)")

    working = pipe.working_image(source, max(args.resolutions))
    _sync(device)
    began = time.perf_counter()
    condition = pipe.encode_condition(working, prompt)
    pipe.encode_condition(working, "")
    _sync(device)
    row["mllm_encode_seconds"] = time.perf_counter() - began
    row["mllm_condition_tokens"] = int(condition["encoder_attention_mask"].sum())

    output = _transformer_output(pipe, min(args.resolutions), args.seed)
    save_file({"output": output.contiguous()}, outputs / f"{_file_name(mode)}-transformer.safetensors")
    if device.type == "cuda":
        row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    row["peak_rss_gib"] = _peak_rss_gib()
    return row


def _file_name(mode: str) -> str:
    return mode.replace("+", "_")


# ---------------------------------------------------------------------------------------------- parent
def settings_of(args: argparse.Namespace) -> dict:
    """What makes rows comparable: a results file holds rows of one setting only."""
    return {"model": str(Path(args.model).resolve()) if args.model else None,
            "preset": None if args.model else args.preset, "device": args.device or "default",
            "resolutions": args.resolutions, "steps": args.steps, "guidance": args.guidance, "seed": args.seed}


def load_results(path: Path, settings: dict) -> dict:
    if not path.is_file():
        return {"settings": settings, "rows": []}
    results = json.loads(path.read_text())
    if results.get("settings") != settings:
        raise SystemExit(f"{path} holds rows measured with other settings ({results.get('settings')}); "
                         f"pass another --out to measure {settings}")
    return results


def save_results(path: Path, results: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(temporary, path)


def compare_with_baseline(rows: list[dict], outputs: Path) -> None:
    """Add each row's relative error, PSNR and speedups against the baseline row (when it has run)."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    from step1x_edit.metrics import psnr
    from step1x_edit.testing.compare import relative_error

    baseline = next((row for row in rows if row["mode"] == BASELINE and "error" not in row), None)
    if baseline is None or not (outputs / f"{_file_name(BASELINE)}-transformer.safetensors").is_file():
        return  # rows measured on another machine keep the comparisons made there
    reference = load_file(outputs / f"{_file_name(BASELINE)}-transformer.safetensors")["output"]
    for row in rows:
        if "error" in row or not (outputs / f"{_file_name(row['mode'])}-transformer.safetensors").is_file():
            continue
        output = load_file(outputs / f"{_file_name(row['mode'])}-transformer.safetensors")["output"]
        row["relative_error"] = relative_error(output, reference)
        scores = [psnr(np.asarray(Image.open(outputs / f"{_file_name(row['mode'])}-{resolution}.png")),
                       np.asarray(Image.open(outputs / f"{_file_name(BASELINE)}-{resolution}.png")))
                  for resolution in row["seconds_per_image"]]
        row["psnr_db"] = sum(scores) / len(scores)
        row["speedup"] = {resolution: baseline["seconds_per_image"][resolution] / seconds
                          for resolution, seconds in row["seconds_per_image"].items()}


def _gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict, modes: list[str]) -> str:
    """The table of ``modes`` (in that order; not yet measured: a dash) and the targets under it."""
    settings, rows = results["settings"], {row["mode"]: row for row in results["rows"]}
    resolutions = [str(resolution) for resolution in settings["resolutions"]]
    weights = f"model {settings['model']}" if settings["model"] else f"random `{settings['preset']}` weights"
    lines = [f"Step1X-Edit per mode: {weights}, {settings['steps']} steps, guidance {settings['guidance']}, bf16.", ""]
    header = (["mode"] + [f"s/image {r}²" for r in resolutions] + [f"DiT s/step {resolutions[0]}²", "MLLM encode s",
              "peak alloc GiB", "peak reserved GiB", "weights resident GiB", "load s", "rel. error",
              "PSNR dB" if settings["model"] else "PSNR dB (noise)", f"speedup {resolutions[0]}²", "lossless", "error"])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode in modes:
        row = rows.get(mode)
        if row is None:
            lines.append("| " + " | ".join([mode] + ["-"] * (len(header) - 2) + ["not measured"]) + " |")
            continue
        if "error" in row:
            lines.append("| " + " | ".join([mode] + ["-"] * (len(header) - 2) + [row["error"].replace("|", "/")])
                         + " |")
            continue
        seconds, first = row["seconds_per_image"], resolutions[0]
        cells = ([mode] + [_number(seconds.get(r)) for r in resolutions]
                 + [_number(row["dit_seconds_per_step"].get(first), 3), _number(row["mllm_encode_seconds"]),
                    _gib(row.get("peak_allocated_bytes")), _gib(row.get("peak_reserved_bytes")),
                    _gib(row["resident_parameter_bytes"]), _number(row["load_seconds"], 1),
                    _number(row.get("relative_error"), 4), _number(row.get("psnr_db"), 1),
                    _number((row.get("speedup") or {}).get(first)), "yes" if row["lossless"] else "no", ""])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *targets(results)]) + "\n"


def targets(results: dict) -> list[str]:
    """One line per target, met or not, at 1024² (n/a when that resolution or the baseline was not measured)."""
    resolution = str(TARGET_RESOLUTION)
    rows = [row for row in results["rows"] if "error" not in row and resolution in row["seconds_per_image"]]
    eager = next((row for row in rows if row["mode"] == BASELINE), None)
    if eager is None:
        return [f"Targets: n/a (no {BASELINE} row at {resolution}²)."]

    def seconds(row):
        return row["seconds_per_image"][resolution]

    def reserved(row):
        return row["peak_reserved_bytes"] / GIB if row.get("peak_reserved_bytes") is not None else float("inf")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = ["Targets (1024² edit, peak = reserved GPU memory):",
             f"- bf16 eager <= {EAGER_SECONDS:.0f} s: {seconds(eager):.1f} s, {verdict(seconds(eager) <= EAGER_SECONDS)}"]
    for limit, time_limit in (SMALL_MEMORY, (SMALLEST_MEMORY, None)):
        fits = [row for row in rows if reserved(row) <= limit and (time_limit is None or seconds(row) <= time_limit)]
        best = min(fits, key=seconds, default=None)
        condition = f"within {limit:.0f} GiB" + (f" at <= {time_limit:.0f} s" if time_limit else "")
        found = f"{best['mode']} ({reserved(best):.1f} GiB, {seconds(best):.1f} s)" if best else "none"
        lines.append(f"- a mode {condition}: {found}, {verdict(best is not None)}")
    for label, chosen, goal in (("fastest lossless", [row for row in rows if row["lossless"]], LOSSLESS_SPEEDUP),
                                ("with caching", [row for row in rows if MODES[row["mode"]].get("cache")],
                                 CACHE_SPEEDUP)):
        best = min(chosen, key=seconds, default=None)
        if best is None:
            lines.append(f"- {label} >= {goal}x eager: no such row")
            continue
        speedup = seconds(eager) / seconds(best)
        note = ""
        if label == "with caching" and not results["settings"]["model"]:
            note = " (random weights: caching decisions depend on the weights; counts only with --model)"
        lines.append(f"- {label} >= {goal}x eager: {best['mode']} {speedup:.2f}x, {verdict(speedup >= goal)}{note}")
    return lines


def run_child(args: argparse.Namespace, mode: str, outputs: Path, timeout: float | None) -> dict | None:
    """Measure ``mode`` in a child process (its progress lines on stdout, everything else in ``outputs/MODE.log``);
    the row, a row with the error it died of, or None when the time budget stopped it."""
    result = outputs / f"{_file_name(mode)}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", mode, "--outputs", str(outputs), "--seed", str(args.seed),
               "--preset", args.preset, "--steps", str(args.steps), "--guidance", str(args.guidance),
               "--resolutions", *map(str, args.resolutions)]
    command += ["--device", args.device] if args.device else []
    command += ["--model", args.model] if args.model else []
    log = outputs / f"{_file_name(mode)}.log"
    with log.open("w") as stderr:
        child = subprocess.Popen(command, stderr=stderr, start_new_session=True)  # its own group: compile workers
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None
    if code == 0 and result.is_file():
        return json.loads(result.read_text())
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    cause = lines[-1] if lines else f"exit status {code}"
    if code < 0:
        cause = f"killed by signal {-code} (out of host memory?); last log line: {cause}"
    return {"mode": mode, "acceleration": MODES[mode], "error": cause[:300]}


def _summary(row: dict) -> str:
    if "error" in row:
        return f"error: {row['error']}"
    parts = [f"{resolution}² {seconds:.2f} s/image" for resolution, seconds in row["seconds_per_image"].items()]
    parts.append(f"MLLM {row['mllm_encode_seconds']:.2f} s")
    if row.get("peak_reserved_bytes") is not None:
        parts.append(f"peak {row['peak_allocated_bytes'] / GIB:.1f} / {row['peak_reserved_bytes'] / GIB:.1f} GiB "
                     "allocated / reserved")
    return ", ".join(parts) + f", load {row['load_seconds']:.1f} s"


def mode_list(text: str) -> list[str]:
    names = list(MODES) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)} or all")
    return list(dict.fromkeys(names))


def main() -> None:
    from step1x_edit.validate import float_argument, int_argument

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Step1X-Edit model directory (default: random full-size weights)")
    parser.add_argument("--preset", choices=("full", "mid", "tiny"), default="full",
                        help="size of the random pipeline (default full; ignored with --model)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--modes", type=mode_list, default=list(MODES),
                        help=f"comma-separated, in the order to run (default all: {','.join(MODES)})")
    parser.add_argument("--resolutions", "--resolution", type=int_argument(64, 4096), nargs="+",
                        default=[1024, 512], help="working sizes (size_level) to time (default 1024 512)")
    parser.add_argument("--steps", type=int_argument(1, 1000), default=28, help="denoising steps (default 28)")
    parser.add_argument("--guidance", type=float_argument(), default=6.0, help="guidance scale (default 6)")
    parser.add_argument("--seed", type=int_argument(0), default=0, help="weights, noise and inputs (default 0)")
    parser.add_argument("--budget-seconds", type=float_argument(0.0, low_open=True),
                        help="stop starting (and stop running) modes after this long (default: no limit)")
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"),
                        help="results JSON, appended to as modes finish (default bench_gpu.json)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--outputs", type=Path, help="folder for the edited images, the transformer outputs and each "
                        "mode's log (default: beside --out, named after it with .outputs)")
    args = parser.parse_args()

    if args.child:
        row = run_mode(args)
        (args.outputs / f"{_file_name(args.child)}.json").write_text(json.dumps(row))
        return

    start = time.monotonic()
    settings = settings_of(args)
    results = load_results(args.out, settings)
    outputs = args.outputs or args.out.with_name(args.out.stem + ".outputs")
    outputs.mkdir(parents=True, exist_ok=True)
    done = {row["mode"] for row in results["rows"]}
    for number, mode in enumerate(args.modes, 1):
        label = f"[{number}/{len(args.modes)}] {mode}"
        if mode in done:
            print(f"{label}: measured earlier (in {args.out})", flush=True)
            continue
        left = None if args.budget_seconds is None else args.budget_seconds - (time.monotonic() - start)
        if left is not None and left <= 0:
            print(f"{label}: not started, the time budget is spent (rerun to measure it)", flush=True)
            continue
        print(f"{label}: running" + ("" if left is None else f" ({left:.0f} s of budget left)"), flush=True)
        began = time.monotonic()
        row = run_child(args, mode, outputs, left)
        if row is None:
            print(f"{label}: stopped at the time budget after {time.monotonic() - began:.0f} s (rerun to measure "
                  "it)", flush=True)
            continue
        results["rows"].append(row)
        compare_with_baseline(results["rows"], outputs)
        save_results(args.out, results)
        print(f"{label}: {_summary(row)} ({time.monotonic() - began:.0f} s)", flush=True)

    table = markdown(results, list(dict.fromkeys([*args.modes, *(row["mode"] for row in results["rows"])])))
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
