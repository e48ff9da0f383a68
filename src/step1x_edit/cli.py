"""The ``step1x-edit`` command line: one entry point whose subcommands are thin clients of the Python API.

``edit``, ``convert`` and ``info`` live here; ``data``, ``train`` and ``bench`` register themselves from their
packages (``step1x_edit.data.cli``, ``step1x_edit.train.cli``, ``step1x_edit.bench.cli``). The demo model's factory
(``train-demo``, ``train-vae``) is a subpackage the library never imports: its commands are loaded by module name
(:data:`DEMO_COMMANDS`). Heavy imports happen inside handlers so
``step1x-edit --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__, validate
from .acceleration.choices import QUANTIZATIONS
from .errors import Step1XEditError
from .model_options import (
    DTYPES,
    acceleration_from_args,
    add_model_arguments,
    add_reasoning_arguments,
    lora_scales,
    torch_dtype,
)
from .versions import VERSION_NAMES


def _edit(args: argparse.Namespace) -> int:
    import torch

    from . import sampling
    from .image_io import load_image
    from .pipeline import check_instruction, check_negative_prompt

    if args.model is None:
        print(
            "step1x-edit: no --model given: using the small built-in demo model (trained on simple synthetic scenes "
            "at 96 px; see its model card). Pass --model DIR for real Step1X-Edit weights.",
            file=sys.stderr,
        )
    # Everything the user typed is checked before the model loads (minutes for the released weights), so a typo
    # in a path or an unwritable output costs nothing. Numbers were checked by their argparse types.
    if args.strength is not None and args.steps is not None:
        sampling.strength_steps(args.steps, args.strength)
    scales = lora_scales(args)
    image = load_image(args.image)
    check_instruction(args.instruction)
    check_negative_prompt(args.negative_prompt)
    output = _output_path(args)
    reasoning = _reasoning_options(args)
    pipe = _load_model(args, scales)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    result = pipe(
        image=image,
        prompt=args.instruction,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        size_level=args.size_level,
        strength=args.strength,
        generator=generator,
        reasoning=reasoning,
    )
    if args.parallel != "none":
        from .acceleration.parallel import is_main_process

        if not is_main_process():  # every rank computed the same image; the first one writes it
            return 0
    try:
        result.images[0].save(output)
    except (OSError, ValueError) as error:
        raise Step1XEditError(f"cannot write {output}: {error}") from error
    print(f"saved {output}")
    for trace in result.reasoning or []:
        if args.verbose:
            print(trace.summary(), file=sys.stderr)
        if args.trace_json:
            Path(args.trace_json).write_text(json.dumps(trace.to_dict(), indent=1, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
            print(f"saved the reasoning trace to {args.trace_json}")
    return 0


def _reasoning_options(args: argparse.Namespace):
    """The thinking and reflection options of ``edit`` (the model's version read from its files' headers, so that
    asking a model of another version for them fails before it loads)."""
    from .checkpoints.inspect import describe_model
    from .pipeline import DEMO_MODEL_DIR
    from .reasoning import OpenAIChat, options_for

    if args.trace_json and not Path(args.trace_json).resolve().parent.is_dir():
        raise Step1XEditError(f"--trace-json {args.trace_json}: its folder does not exist")
    version = args.version or describe_model(args.model or DEMO_MODEL_DIR)["version"]
    judge = None
    if args.judge_model:
        judge = OpenAIChat(args.judge_model, base_url=args.judge_base_url, greedy=args.greedy, seed=args.seed,
                           max_tokens=args.reply_tokens or 128)
    return options_for(version, think=args.think, reflect=args.reflect, max_tries=args.max_tries,
                       max_new_tokens=args.reply_tokens, greedy=args.greedy, judge=judge, seed=args.seed)


def _load_model(args: argparse.Namespace, scales: list[float]):
    """The pipeline the model arguments (``--model``, ``--version``, ``--device``, ``--dtype``, ``--lora``, the
    memory and speed modes) describe; the device is resolved here, the modes and the LoRA files are checked by
    :func:`~step1x_edit.pipeline.load_pipeline` before the model loads, and what the modes did is printed."""
    from .pipeline import load_pipeline, resolve_device

    acceleration = acceleration_from_args(args)
    if acceleration.parallel != "none":  # one process per GPU under torchrun: each rank on its own device
        from .acceleration.parallel import init_from_environment

        if args.device:
            raise Step1XEditError("--device cannot combine with --parallel: each process runs on the GPU torchrun "
                                  "gives it (LOCAL_RANK)")
        device = init_from_environment()
    else:
        device = resolve_device(args.device)
    pipe = load_pipeline(args.model, device=device, torch_dtype=torch_dtype(args.dtype), version=args.version,
                         attn_implementation=args.attn_implementation,
                         loras=list(zip(args.lora, scales, strict=True)), acceleration=acceleration)
    if acceleration.parallel != "none":
        from .acceleration.parallel import is_main_process

        if not is_main_process():
            return pipe
    for note in pipe.acceleration_notes:
        print(f"step1x-edit: {note}", file=sys.stderr)
    return pipe


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serve.http import LOOPBACK_HOSTS, create_app
        from .serve.ray_cli import check_arguments
        from .serve.service import EditService, ServeLimits
        if not args.no_ui:
            import gradio  # noqa: F401
    except ImportError as error:
        raise Step1XEditError(f"serving needs the serve extra ({error.name} is missing): "
                              "pip install 'step1x-edit[serve]'") from error
    check_arguments(args)
    limits = ServeLimits(max_steps=args.max_steps, max_size_level=args.max_size_level, max_images=args.max_images,
                         max_pending=args.max_pending, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_seconds=args.max_edit_seconds)
    allowed_hosts = _allowed_hosts(args.allowed_hosts, args.host, LOOPBACK_HOSTS)
    api_key = args.api_key or os.environ.get("STEP1X_EDIT_API_KEY") or None
    if api_key is not None:
        validate.text("--api-key", api_key, 1024, allow_empty=False)
    scales = lora_scales(args)
    if not args.no_ui and not os.environ.get("GRADIO_TEMP_DIR"):
        import tempfile  # uploads and results in a folder of this server's own, readable by its user only

        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="step1x-edit-serve-")
    _check_can_listen(args.host, args.port)  # before the model loads (minutes for the released weights)
    if args.engine == "ray":
        from .serve.ray_serve import serve_on_ray

        return serve_on_ray(args, limits, api_key, allowed_hosts, scales, DTYPES[args.dtype])
    pipe = _load_model(args, scales)
    name = args.name or (Path(args.model).resolve().name if args.model else "step1x-edit-demo")
    service = EditService(pipe, limits, name=name)
    app = create_app(service, ui=not args.no_ui, api_key=api_key, allowed_hosts=allowed_hosts)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {name} at {where}: " + ("web UI at /ui, " if not args.no_ui else "")
          + "HTTP API at /v1/edit and /v1/images/edits, its docs at /docs; answering to "
          + ("any host name" if "*" in allowed_hosts else ", ".join(allowed_hosts))
          + ("" if api_key else "; no API key: anyone who can reach the port can use it"), file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _check_can_listen(host: str, port: int) -> None:
    """Raise unless a server could listen on ``host``:``port`` now (the port is free, the address is this
    machine's)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:  # socket.gaierror included
        raise Step1XEditError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def _allowed_hosts(given: list[str] | None, bind: str, loopback: tuple[str, ...]) -> list[str]:
    """The host names the server answers to: ``--allowed-hosts`` (comma-separated, repeatable), else the loopback
    names when bound to a loopback address, else any ('*': the server is meant to be reached from elsewhere)."""
    import ipaddress

    if given:
        hosts = [host.strip() for value in given for host in value.split(",") if host.strip()]
        if not hosts:
            raise Step1XEditError("--allowed-hosts: give host names (comma-separated), or '*' for any")
        return hosts
    try:
        is_loopback = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        is_loopback = bind == "localhost"
    return list(loopback) if is_loopback else ["*"]


def _output_path(args: argparse.Namespace) -> Path:
    """Where the edit is saved (``-o``, else IMAGE-edited.png), its folder created; a path an RGB image cannot be
    written to (unknown or unsuitable extension, a folder, a file where a folder belongs, no write permission)
    raises before any work is done."""
    import io

    from PIL import Image

    output = Path(args.output) if args.output else Path(args.image).with_name(Path(args.image).stem + "-edited.png")
    image_format = Image.registered_extensions().get(output.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise Step1XEditError(f"cannot save an image as {output}: unknown image extension {output.suffix!r}; "
                              "use .png, .jpg or .webp")
    try:  # some formats Pillow names cannot hold an RGB image (XBM) or need a plugin (BUFR)
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except (OSError, ValueError, KeyError) as error:
        raise Step1XEditError(f"cannot save an RGB image as {output.suffix!r} ({error}); use .png, .jpg or "
                              ".webp") from None
    try:
        if output.is_dir():
            raise Step1XEditError(f"the output {output} is a folder; give a file name such as "
                                  f"{output / 'edited.png'}")
        _check_writable_folder(output.parent, output)
        output.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(output.parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
            raise Step1XEditError(f"cannot write {output}: permission denied")
    except OSError as error:  # a name too long for the file system, say
        raise Step1XEditError(f"cannot write {output}: {error.strerror or error}") from None
    return output


def _check_writable_folder(folder: Path, target: Path) -> None:
    """Raise unless ``folder`` is, or can be created as, a folder to write ``target`` in: its nearest existing
    ancestor must be a writable folder (not a file)."""
    try:
        existing = next(path for path in (folder, *folder.parents) if path.exists())
    except OSError as error:  # a name too long for the file system, say
        raise Step1XEditError(f"cannot write {target}: {error.strerror or error}") from None
    if not existing.is_dir():
        raise Step1XEditError(f"cannot write {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Step1XEditError(f"cannot write {target}: permission denied in {existing}")


def _convert(args: argparse.Namespace) -> int:
    from .pipeline import Step1XEditPipeline

    out_dir = Path(args.out_dir)
    _check_writable_folder(out_dir, out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
        raise Step1XEditError(f"{out_dir} is not empty; pass --overwrite to write into it")
    from .checkpoints.official_diffusers import is_official_diffusers_folder

    load = (Step1XEditPipeline.from_official_diffusers if is_official_diffusers_folder(args.official_dir)
            else Step1XEditPipeline.from_official)
    quantize = {"transformer": args.quantize_dit, "text_encoder": args.quantize_mllm}
    if any(name != "none" for name in quantize.values()):
        import torch

        from .acceleration.quantization import check_quantization

        for component, name in quantize.items():
            if name != "none":
                check_quantization(name, torch.device("cpu"), part="dit" if component == "transformer" else "mllm")
    pipe = load(args.official_dir, version=args.version, torch_dtype=torch_dtype(args.dtype), device="cpu")
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for component, name in quantize.items():
        if name != "none":
            _write_quantized(pipe, component, name, out_dir / component)
    quantized = ", ".join(f"{component} {name}" for component, name in quantize.items() if name != "none")
    print(f"wrote the diffusers layout of a Step1X-Edit {pipe.version} model to {out_dir}"
          + (f" (quantized: {quantized})" if quantized else ""))
    return 0


def _write_quantized(pipe, component: str, name: str, folder: Path) -> None:
    """Quantize ``pipe``'s ``component`` to ``name`` and write it over its full-precision files in ``folder``."""
    from .acceleration.quantization import quantize_model, save_quantized

    module = getattr(pipe, component)
    quantize_model(module, name, module.dtype, part="dit" if component == "transformer" else "mllm")
    for file in [*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json")]:
        file.unlink()
    save_quantized(module, folder)


def _info(args: argparse.Namespace) -> int:
    from .checkpoints.inspect import describe_model

    description = describe_model(args.model_dir)
    if args.json:
        print(json.dumps(description, indent=1))
        return 0
    print(f"{args.model_dir}: {description['layout']} layout, Step1X-Edit {description['version']}")
    for name, component in description["components"].items():
        details = ", ".join(f"{key} {value}" for key, value in component.items())
        print(f"  {name}: {details}")
    return 0


def _add_edit(subcommands) -> None:
    from . import validate
    from .models.presets import MAX_INFERENCE_STEPS, MAX_SIZE_LEVEL, MIN_SIZE_LEVEL

    parser = subcommands.add_parser("edit", help="edit an image following an instruction",
                                    description="Edit IMAGE following INSTRUCTION and save the result.")
    parser.add_argument("image", help="the image to edit (any format Pillow reads)")
    parser.add_argument("instruction", help='what to change, e.g. "make the sky stormy"')
    parser.add_argument("-o", "--output", help="where to save the result (default: IMAGE-edited.png)")
    add_model_arguments(parser)
    parser.add_argument("--steps", type=validate.int_argument(1, MAX_INFERENCE_STEPS), default=None,
                        help=f"denoising steps, 1 to {MAX_INFERENCE_STEPS} (default: the model's, 28 for the released "
                        "models)")
    parser.add_argument("--guidance", type=validate.float_argument(0.0), default=None,
                        help="classifier-free guidance scale, at least 0 (default: the model's own, 6.0 for the "
                        "released models)")
    parser.add_argument("--size-level", type=validate.int_argument(MIN_SIZE_LEVEL, MAX_SIZE_LEVEL), default=None,
                        help="working resolution: the image is resized to about SIZE_LEVEL^2 pixels, "
                        f"{MIN_SIZE_LEVEL} to {MAX_SIZE_LEVEL} and what the device's memory holds (default: the "
                        "model's own, 1024 for the released models, 96 for the built-in demo model)")
    parser.add_argument("--strength", type=validate.float_argument(0.0, 1.0, low_open=True), default=None,
                        help="how far the edit may move from the source, in (0, 1]: 1 starts from pure noise (the "
                        "official behaviour), lower starts part-way from the noised source and keeps more of it "
                        "(default: the model's own, 1.0 for the released models)")
    parser.add_argument("--seed", type=validate.int_argument(0, validate.MAX_SEED), default=42,
                        help=f"random seed, 0 to {validate.MAX_SEED} (default 42)")
    parser.add_argument("--negative-prompt", default="", help='negative instruction for guidance (default "")')
    reasoning = add_reasoning_arguments(parser)
    reasoning.add_argument("--reply-tokens", type=validate.int_argument(1, 4096), default=None,
                           help="cap of each reasoning reply in tokens, 1 to 4096 (default 128, as the official code)")
    reasoning.add_argument("--greedy", action="store_true",
                           help="decode the reasoning replies greedily (default: sampled, top-p 0.9, temperature 0.7)")
    reasoning.add_argument("--judge-model", help="reflect with this model of an OpenAI-compatible endpoint instead "
                           "of the model's own Qwen2.5-VL, e.g. gpt-4.1 (key from OPENAI_API_KEY; default: none)")
    reasoning.add_argument("--judge-base-url", help="the judge endpoint's root, e.g. http://localhost:8000/v1 "
                           "(default: OPENAI_BASE_URL or OpenAI)")
    reasoning.add_argument("--verbose", action="store_true", help="print the reasoning trace (rewrite, each round's "
                           "reflection and scores, the chosen round)")
    reasoning.add_argument("--trace-json", metavar="FILE", help="write the reasoning trace as JSON to FILE "
                           "(default: none)")
    parser.set_defaults(handler=_edit)


def _add_serve(subcommands) -> None:
    parser = subcommands.add_parser(
        "serve", help="serve a web UI and an HTTP API (needs the serve extra)",
        description="Serve the model: a web UI at /ui and an HTTP API (/v1/edit, the OpenAI-shaped "
        "/v1/images/edits, /health; OpenAPI docs at /docs). Needs pip install 'step1x-edit[serve]'.")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                        "every interface)")
    parser.add_argument("--port", type=validate.int_argument(0, 65535), default=7860, help="port (default 7860)")
    parser.add_argument("--allowed-hosts", action="append", metavar="NAMES",
                        help="host names clients may reach the server by, comma-separated ('*': any; "
                        "'*.example.com': its subdomains); default: localhost, 127.0.0.1 and ::1 when --host is a "
                        "loopback address, else any")
    parser.add_argument("--no-ui", action="store_true", help="the HTTP API only, without the web UI")
    parser.add_argument("--name", type=validate.text_argument(200, allow_empty=False),
                        help="the model id the API reports (default: the model folder's name)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on the API and its docs, and KEY as the "
                        "web UI's password (default: the STEP1X_EDIT_API_KEY environment variable; none: open)")
    parser.add_argument("--max-steps", type=validate.int_argument(1, 1000),
                        help="most denoising steps a request may ask for (default: the larger of 50 and twice the "
                        "model's default)")
    parser.add_argument("--max-size-level", type=validate.int_argument(16, 8192),
                        help="largest working size a request may ask for (default: the model's own, 1024 for the "
                        "released models, 96 for the built-in demo model)")
    parser.add_argument("--max-images", type=validate.int_argument(1, 64), default=4,
                        help="most images one request may ask for (default 4)")
    parser.add_argument("--max-pending", type=validate.int_argument(1, 10_000), default=8,
                        help="requests uploading, running or waiting before new ones are refused with 503 (default 8)")
    parser.add_argument("--max-upload-mb", type=validate.float_argument(0, 1024, low_open=True), default=50,
                        help="largest image file accepted, in MB (default 50)")
    parser.add_argument("--max-edit-seconds", type=validate.float_argument(0, 86_400, low_open=True), default=300,
                        help="longest one edit may run before it is stopped (default 300)")
    from .serve.ray_cli import add_arguments as add_ray_arguments

    add_ray_arguments(parser)
    parser.set_defaults(handler=_serve)


def _add_convert(subcommands) -> None:
    parser = subcommands.add_parser("convert", help="convert an official model directory to the diffusers layout",
                                    description="Read OFFICIAL_DIR (step1x-edit-*.safetensors, vae.safetensors, "
                                    "Qwen2.5-VL-7B-Instruct/) and write OUT_DIR in the diffusers layout.")
    parser.add_argument("official_dir", help="the official model directory to read")
    parser.add_argument("out_dir", help="the folder to write the diffusers layout to")
    parser.add_argument("--version", choices=VERSION_NAMES,
                        help="the checkpoint's version (default: detected from the checkpoint)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                        help="dtype of the written weights (default bf16)")
    parser.add_argument("--quantize-dit", choices=QUANTIZATIONS, default="none",
                        help="write the DiT quantized: int8 or fp8 (torchao, weight-only) or nf4 (bitsandbytes), "
                        "computed in --dtype; it then loads quantized, without its full-precision weights "
                        "(default none)")
    parser.add_argument("--quantize-mllm", choices=QUANTIZATIONS, default="none",
                        help="write the MLLM (Qwen2.5-VL) quantized, as --quantize-dit (default none)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    parser.set_defaults(handler=_convert)


def _add_info(subcommands) -> None:
    parser = subcommands.add_parser("info", help="describe a model directory without loading the weights")
    parser.add_argument("model_dir", help="a model directory (official or diffusers layout)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_info)


DEMO_COMMANDS = "step1x_edit.demo.cli"


def _register_demo(subcommands) -> None:
    importlib.import_module(DEMO_COMMANDS).register(subcommands)


def build_parser() -> argparse.ArgumentParser:
    from .batch.cli import register as register_batch
    from .bench.cli import register as register_bench
    from .data.cli import register as register_data
    from .train.cli import register as register_train

    parser = argparse.ArgumentParser(
        prog="step1x-edit",
        description="Instruction-based image editing with Step1X-Edit.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the package version and exit")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (_add_edit, register_batch, _add_convert, _add_info, register_data, register_train, register_bench,
                     _add_serve):
        register(subcommands)
    _register_demo(subcommands)
    _add_debug_flag(parser)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and on every subcommand under it, so it may follow any command."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_debug_flag(subparser)


@contextlib.contextmanager
def _messages_above_progress_bars(prefix: str, one_line: bool):
    """While the ``with`` block runs, warnings and log records are written with ``tqdm.write``, so a message never
    shares a line with a progress bar (the bar is redrawn below it); with ``one_line``, warnings print as
    ``PREFIX: warning: MESSAGE`` (not Python's file, line and source)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    def show(message, category, filename, lineno, file=None, line=None):
        text = (f"{prefix}: warning: {' '.join(str(message).split())}" if one_line
                else warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"))
        tqdm.write(text, file=file or sys.stderr)

    original = warnings.showwarning
    if _warnings_are_printed():  # a recorder (catch_warnings(record=True), pytest.warns) is left in place
        warnings.showwarning = show
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        warnings.showwarning = original


def _warnings_are_printed() -> bool:
    """Whether Python's own warning display is in place (not a recorder such as ``catch_warnings(record=True)``,
    which swaps the private ``_showwarnmsg_impl``)."""
    default_display = getattr(warnings, "_showwarning_orig", None)
    return (warnings.showwarning is default_display
            and getattr(getattr(warnings, "_showwarnmsg_impl", None), "__module__", None) == "warnings")


# Libraries that log at import what they could not set up for a machine that does not need it (bitsandbytes' hub
# kernels, torchao's CUDA extensions on a CPU build, diffusers' note about them, torch's deprecation of their
# pytree registrations): diffusers imports the quantization backends whenever they are installed.
QUIET_LOGGERS = ("bitsandbytes", "torchao", "diffusers.quantizers", "torch.utils._pytree")


def _quiet_optional_backends() -> None:
    """Keep the optional quantization backends' import-time messages off the command line (``--debug`` shows them)."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error is one line on stderr and a non-zero exit (2 for input the user can fix, 1
    for anything else), the traceback only with ``--debug``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    if not debug:
        _quiet_optional_backends()
    try:
        with _messages_above_progress_bars(f"step1x-edit {args.command}", one_line=not debug):
            return int(args.handler(args) or 0)
    except Step1XEditError as error:
        if debug:
            raise
        print(f"step1x-edit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"step1x-edit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a failure nobody foresaw: still one line, the traceback on request
        if debug:
            raise
        message = " ".join(str(error).split()) or "no message"
        print(f"step1x-edit {args.command}: error: {type(error).__name__}: {message} (run again with --debug for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
