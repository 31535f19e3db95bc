"""Zero-shot prompts: the template ensembles and how class names become prompts and class embeddings.

Torch-free: the embedding goes through the model's own tokenizer and `encode_prompt_ensemble`.
"""
from typing import List, Sequence

CHEST_XRAY_TEMPLATES = ("a chest X-ray image of {}.", "Findings suggesting {}.")  # the released ensemble
PATHOLOGY_TEMPLATES = ("an H&E image of {}.", "a histopathology image of {}.")


def class_major_prompts(names: Sequence[str], templates: Sequence[str]) -> List[str]:
    """For each class name, each template filled with it (the order encode_prompt_ensemble expects)."""
    return [template.format(name) for name in names for template in templates]


def prompt_ensemble_embeddings(model, names: Sequence[str], templates: Sequence[str], device):
    """(C, D) float32 normalised embeddings of the class `names`, each from its prompts `templates`."""
    ids = model.tokenize(class_major_prompts(names, templates)).to(device)  # (C * T, L), class-major
    return model.encode_prompt_ensemble(ids, len(templates)).float()
