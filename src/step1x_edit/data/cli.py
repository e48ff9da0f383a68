"""The ``step1x-edit data`` command group: generate, annotate, filter, inspect, export, import, examples."""

from __future__ import annotations

import argparse
import json

from ..validate import MAX_SEED, float_argument, int_argument, text_argument
from .limits import (
    MAX_ASPECT,
    MAX_CONCURRENCY,
    MAX_COUNT,
    MAX_PHOTO_SIDE,
    MAX_RETRIES,
    MAX_SAMPLES_PER_SHARD,
    MAX_SHARD_SIZE,
    MAX_SHEET_SAMPLES,
    MAX_SIDE,
    MAX_TIMEOUT,
    MAX_WORKERS,
    MIN_SIDE,
)


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="executor (default: local processes)"
    )
    parser.add_argument(
        "--workers",
        type=int_argument(1, MAX_WORKERS),
        default=None,
        help="local worker processes (default: all cores)",
    )
    parser.add_argument(
        "--ray-address", default=None, help="join an existing Ray cluster, e.g. 'auto' or ray://host:10001 (default: start a local Ray)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output store made with a different config (default: refuse)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_endpoint(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--endpoint", required=required, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1"
        + ("" if required else " (default: no MLLM verifier)")
    )
    parser.add_argument("--model", default=None, help="model name served by the endpoint (required with --endpoint)")
    parser.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (default OPENAI_API_KEY)"
    )
    parser.add_argument(
        "--concurrency", type=int_argument(1, MAX_CONCURRENCY), default=8, help="requests in flight per worker (default 8)"
    )
    parser.add_argument(
        "--timeout", type=float_argument(0, MAX_TIMEOUT, low_open=True), default=120.0, help="seconds per request (default 120)"
    )
    parser.add_argument(
        "--max-retries",
        type=int_argument(0, MAX_RETRIES),
        default=4,
        help="retries per request: timeouts, 429, 5xx, malformed replies (default 4)",
    )


def _executor(args):
    from .executors import LocalExecutor, RayExecutor

    if args.engine == "ray":
        return RayExecutor(address=args.ray_address, num_cpus=args.workers)
    return LocalExecutor(args.workers)


def _endpoint(args):
    import os

    from ..errors import Step1XEditError
    from .annotate.client import ChatEndpoint

    if not args.model:
        raise Step1XEditError("--model is required with --endpoint")
    return ChatEndpoint(
        args.endpoint, args.model, os.environ.get(args.api_key_env), args.timeout, args.max_retries
    )


def _parse_resolution(text: str) -> tuple[int, int]:
    """``N`` or ``MIN-MAX``: integers between MIN_SIDE and MAX_SIDE, MIN <= MAX."""
    problem = f"must be a side N or a range MIN-MAX of integers between {MIN_SIDE} and {MAX_SIDE}, got {text!r}"
    try:
        values = [int(part) for part in text.split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if len(values) not in (1, 2) or not MIN_SIDE <= values[0] <= values[-1] <= MAX_SIDE:
        raise argparse.ArgumentTypeError(problem)
    return (values[0], values[-1])


def _parse_aspects(text: str) -> tuple[float, ...]:
    """Comma-separated ``W:H`` ratios (or plain numbers), each between 1/MAX_ASPECT and MAX_ASPECT."""
    problem = (
        f"must be comma-separated ratios W:H such as '1:1,4:3,3:4', each between 1:{MAX_ASPECT:g} and "
        f"{MAX_ASPECT:g}:1, got {text!r}"
    )
    ratios = []
    for part in text.split(","):
        width, _, height = part.partition(":")
        try:
            ratio = float(width) / float(height or 1)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(problem) from None
        if not 1 / MAX_ASPECT <= ratio <= MAX_ASPECT:  # NaN fails this too
            raise argparse.ArgumentTypeError(problem)
        ratios.append(ratio)
    return tuple(ratios)


def _generate(args) -> int:
    from .errors import DataConfigError
    from .generate import (
        SyntheticConfig,
        generate_dataset,
        generate_from_photos,
        generate_region_edits,
        parse_tasks,
    )
    from .store import summarize

    tasks = parse_tasks(args.tasks)
    if args.regions:
        store = generate_region_edits(
            args.out,
            args.regions,
            executor=_executor(args),
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    elif args.photos:
        photo_tasks = ("tone_transformation", "style_transfer") if args.tasks == "all" else tasks
        store = generate_from_photos(
            args.out,
            args.photos,
            photo_tasks,
            args.seed,
            executor=_executor(args),
            overwrite=args.overwrite,
            progress=not args.quiet,
            license=args.license,
        )
    else:
        if args.count is None:
            raise DataConfigError("--count is required (or --photos DIR)")
        config = SyntheticConfig(
            tasks, args.resolution, args.aspect, args.seed, args.shard_size, args.antialias
        )
        store = generate_dataset(
            args.out, args.count, config, _executor(args), args.overwrite, not args.quiet
        )
    summary = summarize(store)
    print(f"{summary['total']} samples in {summary['shards']} shards at {store.root}")
    return 0


def _annotate(args) -> int:
    from .annotate.mllm import annotate_stage
    from .generate import transform_store
    from .stages import Pipeline

    stage = annotate_stage(_endpoint(args), concurrency=args.concurrency, actors=args.actors)
    store = transform_store(
        args.input, args.out, Pipeline((stage,)), _executor(args), args.overwrite, not args.quiet
    )
    print(f"annotated {len(store)} samples into {store.root}")
    return 0


def _filter(args) -> int:
    from .annotate.filters import checks_stage
    from .annotate.mllm import verify_stage
    from .generate import transform_store
    from .stages import Pipeline
    from .store import summarize

    stages = [checks_stage(args.min_side, args.max_outside_change)]
    if args.endpoint:
        stages.append(
            verify_stage(_endpoint(args), args.min_score, args.language, args.concurrency, args.actors)
        )
    store = transform_store(
        args.input, args.out, Pipeline(tuple(stages)), _executor(args), args.overwrite, not args.quiet
    )
    summary = summarize(store)
    print(
        f"{summary['total']} samples, {summary['rejected']} rejected: {json.dumps(summary['reject_reasons'])}"
    )
    return 0


def _inspect(args) -> int:
    from pathlib import Path

    from .store import Store, contact_sheet, summarize

    store = Store(args.store)
    summary = summarize(store)
    sheet = Path(args.sheet) if args.sheet else store.root / "contact_sheet.png"
    if summary["total"]:
        summary["contact_sheet"] = str(contact_sheet(store, sheet, args.samples, args.seed))
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{store.root}: {summary['total']} samples in {summary['shards']} shards, {summary['rejected']} rejected"
    )
    for task, count in summary["per_task"].items():
        print(f"  {task:24s} {count:8d}   rejected {summary['rejected_per_task'].get(task, 0)}")
    for reason, count in summary["reject_reasons"].items():
        print(f"  reject {reason}: {count}")
    if summary["missing_instructions"]:
        print(f"  samples missing an English or Chinese instruction: {summary['missing_instructions']}")
    if "contact_sheet" in summary:
        print(f"contact sheet: {summary['contact_sheet']}")
    return 0


def _export(args) -> int:
    from .interchange import export_official_json, export_webdataset

    split = None if args.split == "all" else args.split
    if args.format == "webdataset":
        paths = export_webdataset(
            args.store,
            args.out,
            args.samples_per_shard,
            args.include_rejected,
            split,
            args.validation_fraction,
            progress=not args.quiet,
        )
        print(f"wrote {len(paths)} WebDataset shards to {args.out}")
    else:
        path = export_official_json(
            args.store,
            args.out,
            args.language,
            args.include_rejected,
            split,
            args.validation_fraction,
            progress=not args.quiet,
            absolute_paths=not args.relative_paths,
        )
        print(f"wrote {path}")
    return 0


def _import(args) -> int:
    from .interchange import import_official_json, import_pair_folder

    if args.format == "official-json":
        store = import_official_json(
            args.source,
            args.out,
            args.task,
            args.language,
            args.license,
            overwrite=args.overwrite,
            progress=not args.quiet,
            image_dir=args.image_dir,
        )
    else:
        store = import_pair_folder(
            args.source, args.out, args.task, args.license, overwrite=args.overwrite, progress=not args.quiet
        )
    print(f"imported {len(store)} samples into {store.root}")
    return 0


def _examples(args) -> int:
    from .synthetic.examples import render_example_images

    for example in render_example_images(args.out, args.resolution, args.antialias):
        print(f"{example['path']}: {example['instruction_en']}")
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the top-level parser."""
    from .taxonomy import TASKS

    data = subcommands.add_parser("data", help="make, annotate, filter, inspect and export editing data")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    generate = commands.add_parser(
        "generate", help="generate synthetic triplets (or model-free edits of a photo folder)"
    )
    generate.add_argument(
        "--tasks", type=text_argument(2000), default="all", help=f"'all' or a comma-separated subset of: {', '.join(TASKS)} (default all)"
    )
    generate.add_argument(
        "--count", type=int_argument(1, MAX_COUNT), default=None, help="number of triplets, the task of sample i being tasks[i %% n] (required unless --photos or --regions)"
    )
    generate.add_argument(
        "--out", required=True, help="output store directory (rerun the same command to resume)"
    )
    generate.add_argument(
        "--resolution",
        type=_parse_resolution,
        default=(128, 256),
        help="side N or range MIN-MAX (default 128-256)",
    )
    generate.add_argument(
        "--aspect",
        type=_parse_aspects,
        default=(1.0,),
        help="aspect ratios W:H, comma-separated (default 1:1)",
    )
    generate.add_argument("--seed", type=int_argument(0, MAX_SEED), default=0,
                          help="seed of the world: the same seed and config give the same samples (default 0)")
    generate.add_argument(
        "--shard-size", type=int_argument(1, MAX_SHARD_SIZE), default=256, help="samples per Parquet shard (default 256)"
    )
    generate.add_argument(
        "--antialias", action="store_true", help="smooth edges, drawn at 2x and averaged down"
    )
    generate.add_argument(
        "--photos", default=None, help="folder of photos: make tone/style triplets from them instead (default: the synthetic world)"
    )
    generate.add_argument(
        "--license", type=text_argument(200), default=None, help="licence recorded for --photos sources (default: none recorded)"
    )
    generate.add_argument(
        "--regions",
        default=None,
        help="JSON-lines spec of colour/text edits of real images with masks or boxes (default: none)",
    )
    _add_engine(generate)
    generate.set_defaults(handler=_generate)

    annotate = commands.add_parser(
        "annotate", help="rewrite instructions with a multi-round MLLM conversation"
    )
    annotate.add_argument("input", help="input store")
    annotate.add_argument("--out", required=True, help="output store")
    annotate.add_argument("--actors", type=int_argument(1, MAX_WORKERS), default=1, help="model actors, Ray engine (default 1)")
    _add_endpoint(annotate, required=True)
    _add_engine(annotate)
    annotate.set_defaults(handler=_annotate)

    filter_ = commands.add_parser(
        "filter", help="cheap checks, then an optional MLLM verifier; rejects keep their reasons"
    )
    filter_.add_argument("input", help="input store")
    filter_.add_argument("--out", required=True, help="output store")
    filter_.add_argument(
        "--min-side", type=int_argument(1, MAX_PHOTO_SIDE), default=64, help="smallest image side accepted, pixels (default 64)"
    )
    filter_.add_argument(
        "--max-outside-change",
        type=float_argument(0, 1),
        default=0.0,
        help="largest changed fraction allowed outside the mask (default 0)",
    )
    filter_.add_argument(
        "--min-score", type=float_argument(0, 10), default=6.0, help="MLLM score below which a sample is rejected (default 6)"
    )
    filter_.add_argument(
        "--language", choices=("en", "zh"), default="en", help="instruction language shown to the verifier (default en)"
    )
    filter_.add_argument("--actors", type=int_argument(1, MAX_WORKERS), default=1, help="model actors, Ray engine (default 1)")
    _add_endpoint(filter_, required=False)
    _add_engine(filter_)
    filter_.set_defaults(handler=_filter)

    inspect = commands.add_parser("inspect", help="counts per task, rejects, and a contact sheet PNG")
    inspect.add_argument("store", help="the store directory")
    inspect.add_argument("--sheet", default=None, help="contact sheet path (default STORE/contact_sheet.png)")
    inspect.add_argument(
        "--samples", type=int_argument(1, MAX_SHEET_SAMPLES), default=12, help="samples on the contact sheet (default 12)"
    )
    inspect.add_argument("--seed", type=int_argument(0, MAX_SEED), default=0,
                         help="seed of the choice of samples for the contact sheet (default 0)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(handler=_inspect)

    export = commands.add_parser(
        "export", help="export to WebDataset shards or the official fine-tuning JSON"
    )
    export.add_argument("store", help="the store directory")
    export.add_argument("--format", choices=("webdataset", "official-json"), required=True,
                        help="WebDataset tar shards, or the official fine-tuning metadata JSON and images")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument(
        "--language", choices=("en", "zh"), default="en", help="caption language, official-json (default en)"
    )
    export.add_argument("--split", choices=("all", "train", "validation"), default="all",
                        help="which samples, by a hash of their id (default all)")
    export.add_argument(
        "--validation-fraction",
        type=float_argument(0, 1),
        default=0.05,
        help="share of samples (by id hash) in validation (default 0.05)"
    )
    export.add_argument(
        "--samples-per-shard", type=int_argument(1, MAX_SAMPLES_PER_SHARD), default=1000, help="samples per tar (default 1000)"
    )
    export.add_argument("--include-rejected", action="store_true",
                        help="also export samples a filter rejected (default: skip them)")
    export.add_argument(
        "--relative-paths",
        action="store_true",
        help="official-json: paths relative to --out (default absolute)",
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(handler=_export)

    import_ = commands.add_parser("import", help="import the official fine-tuning JSON or a folder of pairs")
    import_.add_argument("source", help="metadata JSON file or pair folder")
    import_.add_argument("--format", choices=("official-json", "pairs"), required=True,
                         help="the official fine-tuning metadata JSON, or a folder of source/target pairs")
    import_.add_argument("--out", required=True, help="output store directory")
    import_.add_argument(
        "--task", type=text_argument(100, allow_empty=False), default="unknown", help="task recorded for every sample (default unknown)"
    )
    import_.add_argument(
        "--language", choices=("en", "zh"), default="en", help="language of the captions, official-json (default en)"
    )
    import_.add_argument("--license", type=text_argument(200), default=None, help="licence recorded for every sample (default: none recorded)")
    import_.add_argument(
        "--image-dir", default=None, help="official-json: base of relative paths (default: its folder)"
    )
    import_.add_argument("--overwrite", action="store_true",
                         help="replace an output store made from other input (default: refuse)")
    import_.add_argument("--quiet", action="store_true", help="no progress bar")
    import_.set_defaults(handler=_import)

    examples = commands.add_parser("examples", help="write example source images with suggested instructions")
    examples.add_argument("--out", required=True, help="output folder")
    examples.add_argument("--resolution", type=int_argument(MIN_SIDE, MAX_SIDE), default=256, help="image side, pixels (default 256)")
    examples.add_argument("--antialias", action="store_true", help="smooth edges, to match training data made with --antialias")
    examples.set_defaults(handler=_examples)
