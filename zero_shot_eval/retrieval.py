#!/usr/bin/env python3
"""Image-to-text and text-to-image retrieval with ACE-LoRA or the bare BiomedCLIP baseline: `--help` lists
every flag (ace_lora.evaluation.command_line.retrieval_main).
"""
import sys

from ace_lora.evaluation.command_line import retrieval_main as main

if __name__ == "__main__":
    sys.exit(main())
