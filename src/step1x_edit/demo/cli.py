"""``step1x-edit train-demo`` (rebuild the demo model from its recipe) and ``train-vae`` (a small VAE on the synthetic
world). Handlers import the heavy modules, so ``--help`` stays instant."""

from __future__ import annotations

import argparse

from ..train.cli import MAX_STEPS
from ..validate import int_argument


def _train_demo(args: argparse.Namespace) -> int:
    from .build import STAGES, build_demo

    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    report = build_demo(args.recipe, args.work_dir, args.export, stages, progress=not args.no_progress)
    if "table" in report:
        print(report["table"])
    if "export" in report:
        print(f"exported the demo model to {report['export']}")
    return 0


def _train_vae(args: argparse.Namespace) -> int:
    from .vae import heldout_images, load_vae_config, reconstruction_psnr, train_vae, vae_config_from_dict

    overrides = {} if args.steps is None else {"steps": args.steps}
    config = load_vae_config(args.config, **overrides) if args.config else vae_config_from_dict(overrides)
    vae = train_vae(config, args.output, resume=not args.no_resume, progress=not args.no_progress)
    psnr = reconstruction_psnr(vae, heldout_images(config.calibration_images, config.resolution, config.tasks))
    print(f"held-out reconstruction PSNR {psnr:.2f} dB ({config.calibration_images} images); saved {args.output}/vae")
    return 0


def register(subcommands) -> None:
    vae = subcommands.add_parser(
        "train-vae", help="train a small FLUX-layout VAE on the synthetic editing world (the demo model's VAE)",
        description="Train an AutoencoderKL on fresh synthetic images; resumes from OUTPUT/checkpoints/.",
    )
    vae.add_argument("--output", required=True, help="output directory (checkpoints/, vae/)")
    vae.add_argument("--steps", type=int_argument(1, MAX_STEPS), default=None,
                     help="training steps (default: the config's)")
    vae.add_argument("--config", default=None, help="TOML file of VAETrainingConfig fields (default: the demo's)")
    vae.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT holds a checkpoint")
    vae.add_argument("--no-progress", action="store_true", help="no progress bar")
    vae.set_defaults(handler=_train_vae)

    demo = subcommands.add_parser(
        "train-demo", help="rebuild the built-in demo model from its recipe",
        description="Generate data, train the VAE, assemble, train, evaluate and export the demo model. Every "
        "stage resumes where it stopped.",
    )
    demo.add_argument("recipe", help="recipe TOML, e.g. recipes/demo.toml")
    demo.add_argument("--work-dir", required=True, help="where data, checkpoints and the evaluation go")
    demo.add_argument("--export", help="where to write the float16 model and its card (required by the export stage)")
    demo.add_argument("--stages", help="comma-separated subset of data,vae,assemble,train,finetune,evaluate,export "
                      "(default: all)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_train_demo)
