#!/usr/bin/env python3
"""Train ACE-LoRA on one device (a GPU, or the CPU): `python train.py --help` lists every flag
(main: run_utils.train_main)."""
import sys

from run_utils import train_main as main

if __name__ == "__main__":
    sys.exit(main())
