"""The entry both training scripts share: their command line and the start of a run.

`python train.py` (one device) and `torchrun ... train_multi_gpu.py` (DDP) are `train_main` and
`train_multi_gpu_main`; installed, they are also `ace-lora-train` and `ace-lora-train-ddp`. Every flag is
defined in ace_lora/params/training.py (`--help` lists them; `--config FILE.yaml` sets any of them, as the
released run_utils.py did); ace_lora.train.launch.run_training takes the parsed flags from there.
"""
from typing import Optional, Sequence

from ace_lora.errors import main_guard
from ace_lora.params.training import parse_training_args

SINGLE_DEVICE_DOC = """Train ACE-LoRA (LoRA + ACE-HGNN on BiomedCLIP) on one device: a GPU, or the CPU.

Examples:
  python train.py --demo                                   # synthetic data, tiny model, CPU, < 3 min
  python train.py --train-csv mimic_train.csv --data-root /data/mimic-cxr-jpg \\
      --val-dataset nih --val-csv chestxray14_test.csv --val-data-root /data/nih --output-dir runs/ace
  python train.py --config configs/ace_lora_mimic.yaml --resume latest

Outputs in --output-dir: checkpoints/last.pt and best.pt (resume checkpoints), ACE-LoRA_weights_last.pt
and _best.pt (released weight format), metrics.jsonl, steps.jsonl, training_curves.png, config.yaml.
"""

MULTI_GPU_DOC = """Train ACE-LoRA with DistributedDataParallel on several GPUs or nodes (or CPU processes, with gloo).

Launch with torchrun (or srun; see docs/training.md); --batch-size is per process. Same flags and
outputs as train.py, plus --gather-negatives. Rank 0 logs, validates and saves.
  torchrun --standalone --nproc_per_node 4 train_multi_gpu.py --config configs/ace_lora_mimic.yaml
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      train_multi_gpu.py --config configs/ace_lora_mimic.yaml --gather-negatives
  torchrun --standalone --nproc_per_node 2 train_multi_gpu.py --demo --max-steps 3   # CPU check
"""


def parse_args(argv: Optional[Sequence[str]] = None, distributed: bool = False):
    """The training flags of either script (YAML defaults, then the command line); torch-free."""
    return parse_training_args(argv, MULTI_GPU_DOC if distributed else SINGLE_DEVICE_DOC, distributed=distributed)


@main_guard
def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """train.py: one process on --device."""
    args = parse_args(argv, distributed=False)
    from ace_lora.train.distributed import single_process  # after parsing: --help needs no torch
    from ace_lora.train.launch import run_training
    run_training(args, single_process(args.device))
    return 0


@main_guard
def train_multi_gpu_main(argv: Optional[Sequence[str]] = None) -> int:
    """train_multi_gpu.py: one process per GPU (torchrun / srun set the ranks)."""
    args = parse_args(argv, distributed=True)
    from ace_lora.train.distributed import init_distributed, shutdown  # after parsing: --help needs no torch
    from ace_lora.train.launch import run_training
    context = init_distributed(args.device)
    try:
        run_training(args, context)
    finally:
        shutdown(context)
    return 0
