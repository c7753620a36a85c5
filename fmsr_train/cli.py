"""`fmsr-train`: train the flow-matching SR network from a YAML config."""

from __future__ import annotations

import logging
import os
import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML config file; without it the built-in defaults are used.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override one config key, for example --set train.max_steps=50 (repeatable).",
)
@click.option(
    "--resume", default=None, metavar="auto|PATH",
    help="Continue a run: 'auto' takes the newest readable checkpoint of run_dir, "
    "or give a checkpoint file.",
)
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
def main(config_path, overrides, resume, quiet):
    """Train the x4 flow-matching super-resolution network."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")

    from fmsr_train.config import load_config
    from fmsr_train.train import Trainer, TrainingStopped

    # A config that cannot be read or is invalid is a usage error (2), as in fmsr-infer;
    # a failure during training exits 1.
    try:
        config = load_config(config_path, list(overrides))
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"fmsr-train: error: {exc}", err=True)
        sys.exit(2)
    try:
        trainer = Trainer(config)
        if resume:
            trainer.resume(resume)
        trainer.train()
    except (FileNotFoundError, ValueError, TrainingStopped) as exc:
        click.echo(f"fmsr-train: error: {exc}", err=True)
        sys.exit(1)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
