#!/usr/bin/env python3
"""Train ACE-LoRA with DDP on several GPUs or nodes, under torchrun or srun: `--help` lists every flag
(main: run_utils.train_multi_gpu_main)."""
import sys

from run_utils import train_multi_gpu_main as main

if __name__ == "__main__":
    sys.exit(main())
