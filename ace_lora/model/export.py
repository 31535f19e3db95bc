"""Export a trained model to a folder others can load without this repository's training code.

The folder holds:
- the backbone with LoRA merged, as a plain open_clip model folder (`open_clip_config.json`,
  `open_clip_pytorch_model.bin` and the tokenizer/BERT files of the source folder):
  `open_clip.create_model_and_transforms("local-dir:FOLDER")` loads it and gives BiomedCLIP-style
  global embeddings, without the hypergraph;
- `ace_hgnn.safetensors`: the ACE-HGNN adapters (`img_edge_adapter.down.weight`, ...) and the learned
  `logit_scale`, and `ace_lora_config.json`: the method, its settings and the trainable count;
- `README.md`: a model card (Hugging Face metadata header, how to load, training data, metrics).
`ace_lora.model.checkpoint.read_trained(FOLDER)` reads it back like every other format, so
`ace_lora.model.factory.load_model_for_eval(checkpoint=FOLDER)` (and `ace_lora.load`, every evaluation script's
--checkpoint) rebuilds the full ACE-LoRA model from it: the merged backbone, no LoRA left to apply, the
adapters and the scale. This module only writes.
"""
import copy
import json
import os
import shutil
import tempfile
from typing import Dict, Optional

import torch
from safetensors.torch import save as save_safetensors

from ace_lora.errors import UserInputError
from ace_lora.io import atomic_save, atomic_write, prepare_output_dir
from ace_lora.model.backbone import quiet_transformers
from ace_lora.model.checkpoint import ADAPTERS_FILE, EXPORT_CONFIG, EXPORT_FORMAT, HGNN_SETTINGS, adapter_modules
from ace_lora.model.config import HUB_PREFIX, LOCAL_PREFIX, TRANSFORMERS_PREFIX, AceLoRAConfig
from ace_lora.model.lora import merged_state_dict
from ace_lora.model.methods import get_method
from ace_lora.model.towers import EXPORT_RENAMES

WEIGHTS_FILE = "open_clip_pytorch_model.bin"
GENERATED_PREFIX = "ace_lora_export_config_"  # the temporary folder of a named model's generated config


def merged_backbone_state(model) -> Dict[str, torch.Tensor]:
    """The open_clip state_dict with the method's update merged into the frozen weights, under the plain
    open_clip names: our LoRA merged (a wrapper's `base.` prefix dropped, its factors left out), a peft
    tuner merged by peft's own `merge_and_unload` (on a copy: the model stays usable), `full` as trained.
    A peft tuner that cannot be merged is one UserInputError."""
    merge = get_method(model.config.method).export_merge
    if merge == "none":
        raise UserInputError(f"--method {model.config.method} trains nothing: there is nothing to export")
    if merge == "peft":
        peft_type = (model.config.peft or {}).get("peft_type", "?")
        try:
            clip = copy.deepcopy(model.peft_model).merge_and_unload()
        except (ValueError, NotImplementedError, AttributeError, TypeError) as error:
            raise UserInputError(f"cannot export --method {model.config.method}: peft cannot merge its {peft_type} "
                                 f"tuner into the backbone ({str(error).splitlines()[0]})") from None
        return {_open_clip_name(key): value.detach().clone().cpu() for key, value in clip.state_dict().items()}
    # own_lora: merge our factors; as_trained (full): no factors, the weights are plain already
    return {_open_clip_name(key): value for key, value in merged_state_dict(model.clip).items()}


def _open_clip_name(key: str) -> str:
    """open_clip's own name of a backbone tensor (towers.FusedMultiheadAttention's in_proj is in_proj_weight)."""
    for ours, theirs in EXPORT_RENAMES:
        if key.endswith(ours):
            return key[:-len(ours)] + theirs
    return key


def exported_method(config: AceLoRAConfig) -> str:
    """The method an export states: our own LoRA is 'ace_lora' with a hypergraph and 'lora' without (a
    released-format file does not record --method); every other method by its name."""
    if get_method(config.method).own_lora:
        return "ace_lora" if config.apply_gnn_encoders != "none" else "lora"
    return config.method


def _source_folder(model_name: str, model) -> str:
    """The files of the backbone's own folder (configs, tokenizer), to copy beside the merged weights; for an
    open_clip model name, a folder with its open_clip_config.json (the tokenizer is open_clip's own)."""
    if not model_name.startswith((LOCAL_PREFIX, HUB_PREFIX)):
        import open_clip

        from ace_lora.model.backbone import named_model
        folder = tempfile.mkdtemp(prefix=GENERATED_PREFIX)
        name, _, quick_gelu = named_model(model_name)
        model_cfg = {**open_clip.get_model_config(name), **({"quick_gelu": True} if quick_gelu else {})}
        config = {"model_cfg": model_cfg, "preprocess_cfg": open_clip.get_model_preprocess_cfg(model.clip)}
        with open(os.path.join(folder, "open_clip_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        return folder
    if model_name.startswith(LOCAL_PREFIX):
        return model_name[len(LOCAL_PREFIX):]
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(model_name[len(HUB_PREFIX):], allow_patterns=["*.json", "*.txt"])
    except Exception as err:  # offline without a cache, or no such repository
        raise UserInputError(f"cannot read the configuration of {model_name} ({type(err).__name__}); export "
                             "from --model local-dir:PATH") from None


def export_model(model, model_name: str, out_dir: str, source: str = "", training_data: str = "",
                 metrics: Optional[dict] = None, license_name: str = "mit") -> Dict[str, str]:
    """Write the export folder (module docstring) for `model` (an AceLoRAModel) built on `model_name`."""
    prepare_output_dir(out_dir)
    if os.listdir(out_dir):
        raise UserInputError(f"--output-dir {out_dir} is not empty: export into a new folder")
    merged = merged_backbone_state(model)  # first: a method that cannot be merged leaves the folder empty
    if model_name.startswith(TRANSFORMERS_PREFIX):
        weights = _write_transformers_backbone(model, merged, out_dir)
    else:
        weights = _write_open_clip_backbone(model, model_name, merged, out_dir)
    _write_adapters_and_card(model, model_name, out_dir, source, training_data, metrics, license_name)
    return {"folder": out_dir, "weights": weights, "adapters": os.path.join(out_dir, ADAPTERS_FILE)}


def _write_transformers_backbone(model, merged: Dict[str, torch.Tensor], out_dir: str) -> str:
    """The merged backbone as `save_pretrained` writes it, with the model's tokenizer and image processor: plain
    `transformers.AutoModel.from_pretrained(out_dir)` and `AutoProcessor.from_pretrained(out_dir)` load it."""
    clip = model.clip
    plain = type(clip)(clip.config)
    # the trained scale (and SigLIP's bias) in the model's own parameters: its logits are the trained model's
    scale = model.logit_scale.detach().float().cpu()
    if not scale > 0:  # the model stores it linear: its log would be NaN or -inf
        raise UserInputError(f"the trained logit scale is {scale.item():g}, not positive: it cannot be written as the "
                             "exported model's log scale")
    merged["logit_scale"] = scale.log().reshape(merged["logit_scale"].shape)
    if model.logit_bias is not None:
        merged["logit_bias"] = model.logit_bias.detach().float().cpu().reshape(merged["logit_bias"].shape)
    plain.load_state_dict(merged, strict=True)
    with quiet_transformers():
        plain.save_pretrained(out_dir)
    for part in model.processor_files:
        part.save_pretrained(out_dir)
    return os.path.join(out_dir, "model.safetensors")


def _write_open_clip_backbone(model, model_name: str, merged: Dict[str, torch.Tensor], out_dir: str) -> str:
    """The merged backbone as a plain open_clip model folder (the source folder's configs and tokenizer files)."""
    folder = _source_folder(model_name, model)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not name.endswith((".bin", ".pt", ".pth", ".safetensors")):
            shutil.copy(path, os.path.join(out_dir, name))
    if os.path.basename(folder).startswith(GENERATED_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
    config_path = os.path.join(out_dir, "open_clip_config.json")
    with open(config_path, encoding="utf-8") as f:
        open_clip_config = json.load(f)
    text_cfg = open_clip_config["model_cfg"]["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if os.path.isdir(str(text_cfg.get(key))):  # a local folder: the copied files are in the export now
            text_cfg[key] = os.path.abspath(out_dir)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(open_clip_config, f, indent=1)
    atomic_save(merged, os.path.join(out_dir, WEIGHTS_FILE))
    return os.path.join(out_dir, WEIGHTS_FILE)


def _write_adapters_and_card(model, model_name: str, out_dir: str, source: str, training_data: str,
                             metrics: Optional[dict], license_name: str) -> None:
    tensors = {"logit_scale": model.logit_scale.detach().float().cpu().reshape(1)}
    if model.logit_bias is not None:  # SigLIP-trained: the trained bias, beside the trained scale
        tensors["logit_bias"] = model.logit_bias.detach().float().cpu().reshape(1)
    for name, adapter in adapter_modules(model).items():  # the released names: img_edge_adapter, ...
        for key, value in adapter.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().float().cpu().contiguous()
    atomic_write(os.path.join(out_dir, ADAPTERS_FILE), lambda f: f.write(save_safetensors(tensors)))
    cfg = model.config
    summary = {"format": EXPORT_FORMAT, "base_model": model_name, "source_checkpoint": source,
               "backbone_library": "transformers" if model_name.startswith(TRANSFORMERS_PREFIX) else "open_clip",
               "architecture": model.architecture,
               "method": exported_method(cfg),
               "trained_config": cfg.to_dict(), "trainable_parameters": model.method_parameter_count,
               **{name: getattr(cfg, name) for name in HGNN_SETTINGS}, "training_data": training_data,
               "metrics": metrics or {}, "license": license_name}
    with open(os.path.join(out_dir, EXPORT_CONFIG), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(summary))


# How a model card loads the export: with ace_lora (the full model) and with the backbone's own library.
PLAIN_LOADING = {
    "open_clip": ("local-dir:THIS_FOLDER", "import open_clip                                   # the merged backbone "
                  "alone (no hypergraph)\nclip, _, preprocess = open_clip.create_model_and_transforms("
                  "\"local-dir:THIS_FOLDER\")"),
    "transformers": ("hf:THIS_FOLDER", "import transformers                                # the merged backbone "
                     "alone (no hypergraph)\nclip = transformers.AutoModel.from_pretrained(\"THIS_FOLDER\")\n"
                     "processor = transformers.AutoProcessor.from_pretrained(\"THIS_FOLDER\")"),
}


def model_card(summary: dict) -> str:
    metrics = "".join(f"| {k} | {v} |\n" for k, v in summary["metrics"].items()) or "| (none given) | |\n"
    library = summary.get("backbone_library", "open_clip")
    ours, plain = PLAIN_LOADING[library]
    return f"""---
license: {summary['license']}
library_name: {library}
base_model: {summary['base_model'].split(':', 1)[-1]}
tags:
- medical-imaging
- vision-language
- zero-shot-classification
- ace-lora
---

# ACE-LoRA ({summary['method']}) on {summary['base_model']}

{_method_sentence(summary)}, plus {_hgnn_phrase(summary)} and the learned logit scale.
Trained numbers: {summary['trainable_parameters']:,}. Training data: {summary['training_data'] or 'not stated'}.
Source checkpoint: {summary['source_checkpoint'] or 'not stated'}.

## Load

```python
import ace_lora                                    # the full model: merged backbone + ACE-HGNN
model = ace_lora.load("THIS_FOLDER", model="{ours}")
probabilities = model.classify(["image.png"], ["pneumonia", "no finding"])

{plain}
```

## Metrics

| metric | value |
| --- | --- |
{metrics}"""


def _method_sentence(summary: dict) -> str:
    trained = summary["trained_config"]
    if get_method(trained["method"]).trains_backbone:
        return "Every backbone weight fine-tuned"
    if trained.get("peft"):
        return f"The {summary['method']} tuner (peft {trained['peft'].get('peft_type')}) merged into the backbone"
    return (f"LoRA (r {trained['r']}, alpha {trained['alpha']}, projections {', '.join(trained['params'])}, layers "
            f"'{trained['position']}') merged into the backbone")


def _hgnn_phrase(summary: dict) -> str:
    if summary["apply_gnn_encoders"] == "none":
        return "no ACE-HGNN adapters"
    return f"the ACE-HGNN adapters (towers: {summary['apply_gnn_encoders']}, top-k {summary['topk']})"
