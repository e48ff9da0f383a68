"""The ``step1x-edit bench`` command group: GEdit-Bench generation, judging, statistics, reports, pairwise; and
the per-task evaluation on held-out synthetic data.

::

    step1x-edit bench generate --bench GEdit-Bench --model MODEL --out results [--name NAME] [--lang en,cn]
    step1x-edit bench judge --bench GEdit-Bench --results results/NAME --scores NAME.jsonl [--base-url URL]
    step1x-edit bench stats NAME.jsonl [--json]
    step1x-edit bench import-official OFFICIAL_CSV... --out NAME.jsonl
    step1x-edit bench report --scores NAME=NAME.jsonl ... --out report [--bench GEdit-Bench --results-root results]
    step1x-edit bench pairwise --bench GEdit-Bench --results results/A results/B --out pairs.jsonl
    step1x-edit bench synthetic --generate 110 --model MODEL --out synthetic.json --markdown synthetic.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..model_options import add_reasoning_arguments
from ..validate import MAX_SEED, float_argument, int_argument, text_argument

# Bounds of the numeric options (the judge's and the retry policy's are those of their classes).
MAX_STEPS = 1000
MAX_GUIDANCE = 100
SIZE_LEVEL_RANGE = (16, 4096)
MAX_PROCESSES = 256
MAX_BOOTSTRAP = 100_000
MAX_EXAMPLES = 100
MAX_GENERATED = 100_000
RESOLUTION_RANGE = (32, 2048)
MAX_SHARDS = 100_000


def _names(values: list[str] | None) -> list[str] | None:
    """``["en,cn"]`` or ``["en", "cn"]`` -> ``["en", "cn"]``; ``None`` stays ``None`` (= all)."""
    if not values:
        return None
    return [name for value in values for name in value.split(",") if name]


def _shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N <= ``MAX_SHARDS`` (an argparse type)."""
    match = re.fullmatch(r"([0-9]{1,6})/([0-9]{1,6})", text.strip())
    if not match or not int(match[1]) < int(match[2]) <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"must be I/N with 0 <= I < N <= {MAX_SHARDS}, got {text!r}")
    return int(match[1]), int(match[2])


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bench", required=True, help="local copy of the stepfun-ai/GEdit-Bench Parquet files")
    parser.add_argument("--lang", nargs="+", help="languages to use: en, cn (comma or space separated; default both)")
    parser.add_argument("--tasks", nargs="+", help="task groups to use (default all 11)")
    parser.add_argument(
        "--allow-partial", action="store_true", help="accept a copy whose sample counts differ from the published set"
    )


def _add_judge(parser: argparse.ArgumentParser) -> None:
    from .judges.openai_judge import MAX_CONCURRENCY, MAX_TIMEOUT, TEMPERATURE_RANGE
    from .judging import MAX_ATTEMPTS, MAX_DELAY

    judge = parser.add_argument_group("judge")
    judge.add_argument(
        "--judge", choices=("openai", "transformers"), default="openai",
        help="openai: any OpenAI-compatible endpoint (default); transformers: a local VLM run in-process",
    )
    judge.add_argument("--judge-model", type=text_argument(1000, allow_empty=False), default="gpt-4.1",
                       help="served model name, or the local VLM directory (default gpt-4.1)")
    judge.add_argument("--base-url", help="endpoint root, e.g. http://localhost:8000/v1 (default: OPENAI_BASE_URL or OpenAI)")
    judge.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the API key (default OPENAI_API_KEY)")
    judge.add_argument("--temperature", type=float_argument(*TEMPERATURE_RANGE), default=0.0,
                       help="judge temperature, 0 to 2 (default 0)")
    judge.add_argument("--concurrency", type=int_argument(1, MAX_CONCURRENCY), default=6,
                       help=f"requests in flight at once, 1 to {MAX_CONCURRENCY} (openai judge; default 6)")
    judge.add_argument("--timeout", type=float_argument(0, MAX_TIMEOUT, low_open=True), default=120.0,
                       help=f"seconds before a judge call is abandoned, at most {MAX_TIMEOUT:g} (default 120)")
    judge.add_argument("--attempts", type=int_argument(1, MAX_ATTEMPTS), default=5,
                       help=f"calls per question before it is recorded as failed, 1 to {MAX_ATTEMPTS} (default 5)")
    judge.add_argument("--retry-delay", type=float_argument(0, MAX_DELAY), default=2.0,
                       help=f"first backoff delay in seconds (doubles), 0 to {MAX_DELAY:g} (default 2)")
    judge.add_argument("--device", help="device of the transformers judge (default: device_map=auto)")
    judge.add_argument("--retry-failed", action="store_true", help="ask again the samples recorded as failed")


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command group to the top-level parser."""
    bench = subcommands.add_parser(
        "bench",
        help="GEdit-Bench evaluation",
        description="GEdit-Bench: generate edits, judge them with VIEScore, statistics, reports, pairwise ranking; "
        "synthetic: metrics against exact targets on held-out synthetic data.",
        epilog="typical run:\n" + __doc__.split("::", 1)[1].rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")

    generate = commands.add_parser("generate", help="edit every benchmark sample into the official results layout")
    _add_selection(generate)
    generate.add_argument("--model", help="model directory (default: the built-in model)")
    generate.add_argument("--out", required=True, help="results root; edits go to OUT/NAME/fullset/<task>/<lang>/<key>.png")
    generate.add_argument("--name", help="method name (default: the model directory's name)")
    generate.add_argument("--seed", type=int_argument(0, MAX_SEED), default=0, help="seed of every edit (default 0)")
    generate.add_argument("--steps", type=int_argument(1, MAX_STEPS), default=28, help="denoising steps (default 28)")
    generate.add_argument("--guidance", type=float_argument(0, MAX_GUIDANCE), default=6.0,
                          help="guidance scale (default 6)")
    generate.add_argument("--size-level", type=int_argument(*SIZE_LEVEL_RANGE), default=1024,
                          help="working resolution (default 1024)")
    generate.add_argument("--negative-prompt", default="",
                          help='negative instruction for guidance (default "", as the released models use)')
    generate.add_argument("--source", choices=("input_image", "input_image_raw"), default="input_image",
                          help="dataset image to edit (default input_image, the pre-resized source)")
    generate.add_argument("--device", help="device (default: this process's accelerate device)")
    generate.add_argument("--overwrite", action="store_true", help="regenerate edits that already exist")
    generate.add_argument("--processes", type=int_argument(1, MAX_PROCESSES),
                          help="worker processes, one per GPU (default: one per visible GPU; under accelerate "
                               "launch, its processes)")
    add_reasoning_arguments(generate, "each instruction")
    generate.add_argument("--shard", type=_shard,
                          help="I/N: edit only shard I (0-based) of N, set for each worker process "
                               "(default: all samples)")
    generate.set_defaults(handler=_generate)

    judge = commands.add_parser("judge", help="score a results directory with VIEScore (resumable)")
    _add_selection(judge)
    judge.add_argument("--results", required=True, help="RESULTS/NAME directory of one model (any model's edits)")
    judge.add_argument("--scores", required=True, help="scores file to append to (JSON lines)")
    judge.add_argument("--image-prep", choices=("upstream", "snapshot"), default="upstream",
                       help="upstream (default): raw source and edit each resized to ~512x512 area; "
                            "snapshot: pre-resized source, edit resized to it")
    _add_judge(judge)
    judge.set_defaults(handler=_judge)

    stats = commands.add_parser("stats", help="official GEdit-Bench statistics of a scores file")
    stats.add_argument("scores", help="scores file (JSON lines)")
    stats.add_argument("--json", action="store_true", help="print {lang: {full|intersection: {group: [SC, PQ, O]}}}")
    stats.add_argument("--details", action="store_true", help="with --json: also failure counts and 95%% intervals")
    stats.add_argument("--bootstrap", type=int_argument(0, MAX_BOOTSTRAP), default=1000,
                       help="bootstrap resamples for the intervals (0: none; default 1000)")
    stats.set_defaults(handler=_stats)

    official = commands.add_parser("import-official", help="convert official per-group score CSVs to a scores file")
    official.add_argument("csv", nargs="+", help="official *_vie_score.csv / *_gpt_score.csv files (one per group)")
    official.add_argument("--out", required=True, help="scores file to write (JSON lines)")
    official.set_defaults(handler=_import_official)

    report = commands.add_parser("report", help="Markdown/HTML report with per-task charts and example grids")
    report.add_argument("--scores", nargs="+", required=True, metavar="NAME=SCORES",
                        help="one scores file per model, as NAME=PATH (NAME defaults to the file stem)")
    report.add_argument("--out", required=True, help="report directory")
    report.add_argument("--bench", help="GEdit-Bench copy, to draw example grids (default: no grids)")
    report.add_argument("--results-root",
                        help="results root holding NAME/fullset/..., to draw example grids (default: no grids)")
    report.add_argument("--examples", type=int_argument(1, MAX_EXAMPLES), default=2,
                        help="example samples per task group (default 2)")
    report.add_argument("--allow-partial", action="store_true",
                        help="accept a GEdit-Bench copy whose sample counts differ from the published set")
    report.set_defaults(handler=_report)

    pairwise = commands.add_parser("pairwise", help="side-by-side judging of two or more models, with Elo ratings")
    _add_selection(pairwise)
    pairwise.add_argument("--results", nargs="+", required=True, help="RESULTS/NAME directories of the models")
    pairwise.add_argument("--out", required=True, help="pairwise judgements file to append to (JSON lines)")
    _add_judge(pairwise)
    pairwise.set_defaults(handler=_pairwise)

    synthetic = commands.add_parser(
        "synthetic", help="PSNR / SSIM / edit-region accuracy per task on held-out synthetic data, vs the identity"
    )
    samples = synthetic.add_mutually_exclusive_group(required=True)
    samples.add_argument("--store", help="data store whose validation split is evaluated (this or --generate is "
                         "required)")
    samples.add_argument("--generate", type=int_argument(1, MAX_GENERATED), metavar="N",
                         help="evaluate N freshly generated samples (this or --store is required)")
    synthetic.add_argument("--resolution", type=int_argument(*RESOLUTION_RANGE), default=128,
                           help="side of generated samples (default 128)")
    synthetic.add_argument("--model", help="model directory (default: the built-in model)")
    synthetic.add_argument("--steps", type=int_argument(1, MAX_STEPS), help="denoising steps (default: the model's own)")
    synthetic.add_argument("--guidance", type=float_argument(0, MAX_GUIDANCE),
                           help="guidance scale (default: the model's own)")
    synthetic.add_argument("--strength", type=float_argument(0, 1, low_open=True),
                           help="image-to-image strength in (0, 1] (default: the model's own)")
    synthetic.add_argument("--seed", type=int_argument(0, MAX_SEED), default=0,
                           help="seed of the edits and of the generated samples (default 0)")
    synthetic.add_argument("--size-level", type=int_argument(*SIZE_LEVEL_RANGE),
                           help="working resolution (default: the model's own)")
    synthetic.add_argument("--lang", choices=("en", "zh"), default="en", help="instruction language (default en)")
    synthetic.add_argument("--device", help="device (default: the best available)")
    synthetic.add_argument("--out", help="result JSON to write; rows go to OUT.rows.jsonl, so a rerun resumes "
                           "(default: print the table only)")
    synthetic.add_argument("--rows", help="JSON-lines file of per-sample rows to resume from (default: "
                           "OUT.rows.jsonl with --out, else none)")
    synthetic.add_argument("--markdown",
                           help="write the per-task table to this Markdown file too (default: print it only)")
    synthetic.set_defaults(handler=_synthetic)


def _load(args):
    from .dataset import load_gedit

    return load_gedit(args.bench, _names(args.lang), _names(args.tasks), allow_partial=args.allow_partial)


def _make_judge(args):
    import os

    from .judging import RetryPolicy

    if args.judge == "openai":
        from .judges.openai_judge import OpenAIJudge

        judge = OpenAIJudge(
            model=args.judge_model, base_url=args.base_url, api_key=os.environ.get(args.api_key_env),
            temperature=args.temperature, timeout=args.timeout, concurrency=args.concurrency,
        )
    else:
        from .judges.transformers_judge import TransformersJudge

        judge = TransformersJudge.from_pretrained(args.judge_model, device=args.device)
    return judge, RetryPolicy(attempts=args.attempts, initial_delay=args.retry_delay)


def _spawn_workers(args, processes: int) -> int:
    """Run ``bench generate`` once per shard in parallel child processes, each on its own GPU if there are any."""
    import os
    import subprocess
    import sys

    import torch

    from ..errors import Step1XEditError

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count())))).split(",")
    gpus = [gpu for gpu in gpus if gpu]
    options = {"--bench": args.bench, "--out": args.out, "--seed": args.seed, "--steps": args.steps,
               "--guidance": args.guidance, "--size-level": args.size_level, "--negative-prompt": args.negative_prompt,
               "--source": args.source, "--model": args.model, "--name": args.name, "--device": args.device}
    argv = [sys.executable, "-m", "step1x_edit.cli", "bench", "generate"]
    argv += [f"{flag}={value}" for flag, value in options.items() if value is not None]
    for flag, values in (("--lang", args.lang), ("--tasks", args.tasks)):
        if values:
            argv += [flag, *values]
    argv += ["--allow-partial"] * args.allow_partial + ["--overwrite"] * args.overwrite
    argv += [f"--{'' if value else 'no-'}{flag}" for flag, value in (("think", args.think), ("reflect", args.reflect))
             if value is not None] + ([f"--max-tries={args.max_tries}"] if args.max_tries else [])
    workers = []
    for index in range(processes):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        else:  # CPU workers share the cores instead of each starting one thread per core
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        workers.append(subprocess.Popen([*argv, "--shard", f"{index}/{processes}"], env=env))
    failed = [index for index, worker in enumerate(workers) if worker.wait() != 0]
    if failed:
        raise Step1XEditError(f"generation shard(s) {failed} of {processes} failed; rerun to resume")
    return 0


def _generate(args) -> int:
    import torch

    from .generate import PipelineEditor, generate, process_state

    shard = args.shard
    state = process_state()
    if shard is None and state.num_processes == 1:
        processes = args.processes or max(1, torch.cuda.device_count())
        if processes > 1:
            return _spawn_workers(args, processes)
    samples = _load(args)
    name = args.name or (Path(args.model).name if args.model else "step1x-edit")
    device = args.device or (None if shard else str(state.device))
    editor = PipelineEditor.from_model(
        args.model, device=device, num_inference_steps=args.steps, guidance_scale=args.guidance,
        size_level=args.size_level, negative_prompt=args.negative_prompt, think=args.think, reflect=args.reflect,
        max_tries=args.max_tries,
    )
    summary = generate(samples, editor, Path(args.out) / name, seed=args.seed, source_column=args.source,
                       settings=editor.settings(), overwrite=args.overwrite, shard=shard)
    index, count = summary.shard
    print(f"shard {index + 1}/{count}: wrote {summary.written} edits, {summary.skipped} already present "
          f"-> {Path(args.out) / name}")
    return 0


def _judge(args) -> int:
    from .judging import judge_results
    from .stats import compute_statistics, format_statistics, read_scores

    samples = _load(args)
    judge, policy = _make_judge(args)
    summary = judge_results(samples, args.results, judge, args.scores, image_prep=args.image_prep, policy=policy,
                            retry_failed=args.retry_failed)
    asked = ", ".join(f"{n} {status}" for status, n in sorted(summary.asked.items())) or "nothing"
    print(f"judged: {asked}; {summary.skipped} already in {summary.scores_path}")
    print(format_statistics(compute_statistics(read_scores(args.scores))), end="")
    return 0


def _stats(args) -> int:
    from .stats import compute_statistics, format_statistics, read_scores

    stats = compute_statistics(read_scores(args.scores), bootstrap=args.bootstrap)
    if args.json:
        print(json.dumps(stats.to_dict() if args.details else stats.scores, indent=1))
    else:
        print(format_statistics(stats), end="")
    return 0


def _import_official(args) -> int:
    from .official import read_official_csv

    records = [record for path in args.csv for record in read_official_csv(path)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    print(f"wrote {len(records)} judgements from {len(args.csv)} file(s) to {args.out}")
    return 0


def _report(args) -> int:
    from ..errors import Step1XEditError
    from .report import write_report

    scores = {}
    for item in args.scores:
        name, _, path = item.rpartition("=")
        scores[name or Path(path).stem] = path
    samples = results_dirs = None
    if args.bench and args.results_root:
        from .dataset import load_gedit

        samples = load_gedit(args.bench, allow_partial=args.allow_partial)
        results_dirs = {name: Path(args.results_root) / name for name in scores}
    elif args.bench or args.results_root:
        raise Step1XEditError("example grids need both --bench and --results-root")
    path = write_report(scores, args.out, samples, results_dirs, examples_per_task=args.examples)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0


def _pairwise(args) -> int:
    from .pairwise import judge_pairwise, pairwise_summary, read_pairwise

    samples = _load(args)
    judge, policy = _make_judge(args)
    results = {Path(path).name: path for path in args.results}
    statuses = judge_pairwise(samples, results, judge, args.out, policy=policy, retry_failed=args.retry_failed)
    print(f"judged: {statuses or 'nothing new'}")
    summary = pairwise_summary(read_pairwise(args.out))
    print(f"{summary['games']} games, {summary['failed']} failed judgements")
    for name, rating in summary["ratings"].items():
        rates = ", ".join(f"{rate:.0%} vs {other}" for other, rate in summary["win_rates"].get(name, {}).items())
        print(f"{name}: Elo {rating:.0f}  ({rates})")
    return 0


def _synthetic(args) -> int:
    from ..pipeline import load_pipeline
    from .synthetic import evaluate_editor, format_table, generated_samples, pipeline_editor, store_samples

    if args.store:
        samples = store_samples(args.store)
    else:
        samples = generated_samples(args.generate, resolution=args.resolution, seed=args.seed)
    settings = {
        "model": args.model or "default",
        "samples": args.store or f"generated:{args.generate}@{args.resolution}",
        "steps": args.steps, "guidance": args.guidance, "strength": args.strength, "seed": args.seed,
        "size_level": args.size_level, "language": args.lang,
    }
    rows = args.rows or (Path(args.out).with_suffix(".rows.jsonl") if args.out else None)
    pipe = load_pipeline(args.model, device=args.device)
    editor = pipeline_editor(pipe, steps=args.steps, guidance=args.guidance, seed=args.seed, size_level=args.size_level,
                             strength=args.strength)
    result = evaluate_editor(editor, samples, rows_path=rows, settings=settings, language=args.lang)
    table = format_table(result)
    print(table, end="")
    if args.out:
        print(f"wrote {result.save(args.out)}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table, encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0
