#!/usr/bin/env python3
"""Train ACE-LoRA with DistributedDataParallel on several GPUs or nodes (or CPU processes, with gloo).

Launch with torchrun (or srun; see README 'Training', several GPUs); --batch-size is per
process. Same flags and outputs as train.py, plus --gather-negatives. Rank 0 logs, validates and saves.
  torchrun --standalone --nproc_per_node 4 train_multi_gpu.py --config configs/ace_lora_mimic.yaml
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      train_multi_gpu.py --config configs/ace_lora_mimic.yaml --gather-negatives
  torchrun --standalone --nproc_per_node 2 train_multi_gpu.py --demo --max-steps 3   # CPU check
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ace_lora.errors import main_guard  # noqa: E402
from ace_lora.params.training import parse_training_args  # noqa: E402


@main_guard
def main(argv=None) -> int:
    args = parse_training_args(argv, __doc__, distributed=True)
    from ace_lora.distributed import init_distributed, shutdown  # after parsing: --help needs no torch
    from ace_lora.launch import run_training
    context = init_distributed(args.device)
    try:
        run_training(args, context)
    finally:
        shutdown(context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
