#!/usr/bin/env python3
"""Train ACE-LoRA (LoRA + ACE-HGNN on BiomedCLIP) on one device: a GPU, or the CPU.

Examples:
  python train.py --demo                                   # synthetic data, tiny model, CPU, < 3 min
  python train.py --train-csv mimic_train.csv --data-root /data/mimic-cxr-jpg \\
      --val-dataset nih --val-csv chestxray14_test.csv --val-data-root /data/nih --output-dir runs/ace
  python train.py --config configs/ace_lora_mimic.yaml --resume latest

Outputs in --output-dir: checkpoints/last.pt and best.pt (resume checkpoints), ACE-LoRA_weights_last.pt
and _best.pt (released weight format), metrics.jsonl, steps.jsonl, training_curves.png, config.yaml.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ace_lora.errors import main_guard  # noqa: E402
from ace_lora.params.training import parse_training_args  # noqa: E402


@main_guard
def main(argv=None) -> int:
    args = parse_training_args(argv, __doc__, distributed=False)
    from ace_lora.distributed import single_process  # after parsing: --help needs no torch
    from ace_lora.launch import run_training
    run_training(args, single_process(args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
