"""ACE-LoRA: LoRA + ACE-HGNN adaptation of BiomedCLIP (library package).

The method lives here; the top-level scripts (`train.py`, `train_multi_gpu.py`, `zero_shot_eval/`,
`dataset_prep/`) only parse arguments and call into this package.
"""
