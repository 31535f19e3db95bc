#!/usr/bin/env python3
"""Train ACE-LoRA with DDP on several GPUs or nodes, under torchrun or srun: `--help` lists every flag.

The command line and the start of the run are run_utils.train_multi_gpu_main, shared with train.py.
"""
import sys

from run_utils import train_multi_gpu_main as main

if __name__ == "__main__":
    sys.exit(main())
