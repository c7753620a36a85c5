"""Run by torchrun in the two-process test: train a few steps, save this rank's weights."""

import sys
from pathlib import Path

import torch

from fmsr_train.config import load_config
from fmsr_train.train import Trainer


def main(config_path: str, out_dir: str, *overrides: str) -> None:
    trainer = Trainer(load_config(config_path, list(overrides)))
    trainer.train()
    rank = trainer.ddp.rank
    torch.save(
        {"model": trainer.model.state_dict(), "samples_per_step": trainer.samples_per_step},
        Path(out_dir) / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
