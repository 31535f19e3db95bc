#!/usr/bin/env python3
"""Export a trained ACE-LoRA model to a folder others can load without this repository's training code:
`--help` lists every flag (ace_lora.evaluation.command_line.export_main).
"""
import sys

from ace_lora.evaluation.command_line import export_main as main

if __name__ == "__main__":
    sys.exit(main())
