#!/usr/bin/env python3
"""Classify your own images with ACE-LoRA (or bare BiomedCLIP), zero-shot, with your own class names: `--help`
lists every flag (ace_lora.evaluation.command_line.predict_main); the Python API is `ace_lora.load`.
"""
import sys

from ace_lora.evaluation.command_line import predict_main as main

if __name__ == "__main__":
    sys.exit(main())
