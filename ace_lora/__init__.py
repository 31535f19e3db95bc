"""ACE-LoRA: LoRA + ACE-HGNN adaptation of BiomedCLIP (library package).

The method lives here; the top-level scripts (`train.py`, `train_multi_gpu.py`, `zero_shot_eval/`,
`dataset_prep/`) only parse arguments and call into this package.
"""


def load(checkpoint=None, **kwargs):
    """`ace_lora.evaluation.predict.load`: a model to classify, embed and localise with.

    Imported on first use, so that importing the package (every command line does) loads no torch."""
    from ace_lora.evaluation.predict import load as load_predictor
    return load_predictor(checkpoint, **kwargs)
