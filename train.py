#!/usr/bin/env python3
"""Train ACE-LoRA on one device (a GPU, or the CPU): `python train.py --help` lists every flag.

The command line and the start of the run are run_utils.train_main, shared with train_multi_gpu.py.
"""
import sys

from run_utils import train_main as main

if __name__ == "__main__":
    sys.exit(main())
