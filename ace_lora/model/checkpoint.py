"""Checkpoints: every format a trained model comes in, read by one function (`read_trained`), and the
released format and our resume checkpoints written.

Formats `read_trained(path)` knows (it returns the model configuration and copies the tensors in):
- the released weight format (the authors' `ACE_LoRA.pt`, our `ACE-LoRA_weights_*.pt`), below;
- our training checkpoints (`checkpoints/last.pt`, `best.pt`): `trainable` tensors by module path and
  `model_config`, plus the run state (ace_lora.train.run_state);
- an export folder (ace_lora/model/export.py): the backbone with LoRA merged, `ace_hgnn.safetensors` and
  `ace_lora_config.json`; it is its own backbone.

Released format (`torch.save` dict, loads with weights_only=True):
  weights['layer_<i>'][<p>_proj] = {'w_lora_A': (r, in), 'w_lora_B': (out, r)}: text layers first
      (BERT encoder.layer[i]), then image layers (ViT blocks[i - n_text_layers]); p in q, k, v, o.
  weights['img_edge_adapter' | 'img_node_adapter' | 'text_edge_adapter' | 'text_node_adapter']:
      adapter state_dicts (down.weight/bias, up.weight/bias).
  weights['logit_scale']: the learned scale, linear (already exponentiated).
  metadata: {'r', 'topk', 'params', 'position', 'loss_type', 'use_labels', 'loss', ...}; a model of another
      architecture than BiomedCLIP's adds `architecture` (ace_lora.model.towers) and loads only onto it. As released,
      `loss_type`
      says whether the hypergraph exists ('clip_loss_ace_hgnn', or '_hgat' in the published file: adapters
      present; 'clip_loss': LoRA only); `use_labels` says whether same-label negatives were masked; our
      files add `loss`, the loss's registry name (ace_lora.model.loss.LOSSES).
Every write is atomic: a temporary file in the same folder, then os.replace.
"""
import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors.torch import load_file as load_safetensors

from ace_lora.errors import TrainingDiverged, UserInputError
from ace_lora.io import atomic_save
from ace_lora.model.config import LOCAL_PREFIX, TRANSFORMERS_PREFIX, AceLoRAConfig, declared_settings, setting_default
from ace_lora.model.lora import released_lora_entries
from ace_lora.model.loss import LOSSES
from ace_lora.model.model import AceLoRAModel


def load_checkpoint_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserInputError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise UserInputError(f"cannot read checkpoint {path}: not a PyTorch checkpoint file, or a damaged one "
                             f"({type(err).__name__})") from err


def adapter_modules(model: AceLoRAModel) -> Dict[str, torch.nn.Module]:
    out = {}
    for prefix, hgnn in (("img", model.image_hgnn), ("text", model.text_hgnn)):
        if hgnn is not None:
            out[f"{prefix}_edge_adapter"] = hgnn.edge_adapter
            out[f"{prefix}_node_adapter"] = hgnn.node_adapter
    return out


HGNN_LOSS_TYPE, LORA_ONLY_LOSS_TYPE = "clip_loss_ace_hgnn", "clip_loss"


def released_state(model: AceLoRAModel, loss: str = "label_guided") -> dict:
    """The model's trainables in the released format (fp32, CPU)."""
    weights: Dict[str, Any] = {}
    for layer, proj, factors in released_lora_entries(model.text_lora, model.vision_lora):
        weights.setdefault(layer, {})[proj] = {
            "w_lora_A": factors.lora_A.detach().float().cpu().clone(),
            "w_lora_B": factors.lora_B.detach().float().cpu().clone(),
        }
    for name, adapter in adapter_modules(model).items():
        weights[name] = {k: v.detach().float().cpu().clone() for k, v in adapter.state_dict().items()}
    weights["logit_scale"] = model.logit_scale.detach().float().cpu().clone()
    if model.logit_bias is not None:  # SigLIP-trained models: the bias trains with the scale
        weights["logit_bias"] = model.logit_bias.detach().float().cpu().clone()
    cfg = model.config
    values = {spec.metadata["released"]: copy.copy(getattr(cfg, spec.name)) for spec in RELEASED_SETTINGS}
    values.update({alias: getattr(cfg, name) for name, alias in RELEASED_ALIASES.items()})
    values.update({"loss": loss, "use_labels": LOSSES[loss].uses_labels,
                   "loss_type": HGNN_LOSS_TYPE if adapter_modules(model) else LORA_ONLY_LOSS_TYPE})
    order = [key for key in RELEASED_KEY_ORDER if key in values]  # as our earlier files, a new setting last
    metadata = {key: values[key] for key in order + sorted(set(values) - set(order))}
    if families(model.architecture) != RELEASED_FAMILIES:  # BiomedCLIP's files stay exactly as released
        metadata["architecture"] = model.architecture
    return {"weights": weights, "metadata": metadata}


RELEASED_FAMILIES = ("timm-vit", "hf-text")  # BiomedCLIP's: what a file without `architecture` was trained on


def families(architecture: dict) -> Tuple[str, str]:
    return architecture["vision"]["family"], architecture["text"]["family"]


def check_architecture(model: AceLoRAModel, recorded: Optional[dict], path: str) -> None:
    """`path` was trained on the model's architecture (a file that records none: on BiomedCLIP's families)."""
    if recorded is None:
        if families(model.architecture) != RELEASED_FAMILIES:
            raise UserInputError(f"{path} was trained on BiomedCLIP's architecture (timm ViT + BERT); this model has "
                                 f"{' + '.join(families(model.architecture))}: load it with the --model it was "
                                 "trained on")
        return
    for tower in ("vision", "text"):
        if recorded[tower] != model.architecture[tower]:
            theirs = ", ".join(f"{k} {v}" for k, v in recorded[tower].items())
            ours = ", ".join(f"{k} {v}" for k, v in model.architecture[tower].items())
            raise UserInputError(f"{path} was trained on another {tower} tower ({theirs}; this model: {ours}): load "
                                 "it with the --model it was trained on")


def check_finite_trainables(model: AceLoRAModel) -> None:
    """No weight file or checkpoint is ever written with a NaN/inf trained tensor (TrainingDiverged)."""
    bad = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"{len(bad)} trained tensor(s) hold NaN or infinite values ({bad[0]}, ...); "
                               "not saved")


def check_finite_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """A checkpoint called good holds no NaN/inf optimiser moment either: an inf second moment with finite
    weights diverges again at once after a resume."""
    bad = sum(1 for state in optimizer.state.values() for value in state.values()
              if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all())
    if bad:
        raise TrainingDiverged(f"{bad} optimiser state tensor(s) hold NaN or infinite values (the weights are "
                               "finite); not saved")


def save_released_checkpoint(model: AceLoRAModel, path: str, loss: str = "label_guided") -> None:
    """The released format; `loss` (a registry name, ace_lora.model.loss) is recorded by name and, as released,
    as `use_labels`."""
    check_finite_trainables(model)
    atomic_save(released_state(model, loss), path)


def read_released_checkpoint(path: str) -> dict:
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or "weights" not in state:
        raise UserInputError(f"{path} is not an ACE-LoRA weight file (no 'weights' entry)")
    return state


def gnn_encoders_from_metadata(metadata: dict) -> str:
    """Towers with a hypergraph: our files record it; in the authors' files `loss_type` decides."""
    if "apply_gnn_encoders" in metadata:
        return metadata["apply_gnn_encoders"]
    return "none" if metadata.get("loss_type") == LORA_ONLY_LOSS_TYPE else "both"


def config_from_metadata(metadata: dict, source: str = "checkpoint", **overrides) -> AceLoRAConfig:
    """The AceLoRAConfig a released checkpoint was trained with (an unrecorded setting: its default)."""
    try:
        cfg = _config_from_metadata(metadata)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"{source}: invalid metadata, {err}") from None
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# The declared settings the released format records (ace_lora.model.config), the second name some of them also
# have there (the authors' `k_nearest` for top-k), the order of the keys in our files, and what an authors' file
# without `apply_gnn_encoders` says instead (`loss_type`: whether the hypergraph exists).
RELEASED_SETTINGS = tuple(spec for spec in declared_settings() if spec.metadata["released"])
RELEASED_ALIASES = {spec.name: spec.metadata["released_alias"] for spec in RELEASED_SETTINGS
                    if spec.metadata.get("released_alias")}
RELEASED_FALLBACKS = {**RELEASED_ALIASES, "apply_gnn_encoders": "loss_type"}
RELEASED_KEY_ORDER = ("r", "topk", "k_nearest", "params", "position", "loss_type", "loss", "use_labels", "alpha",
                      "dropout_rate", "hidden_features", "apply_gnn_encoders")


def recorded_settings(metadata: dict) -> Tuple[str, ...]:
    """The settings a released file's metadata records (the others read as their defaults)."""
    return tuple(spec.name for spec in RELEASED_SETTINGS
                 if spec.metadata["released"] in metadata or RELEASED_FALLBACKS.get(spec.name) in metadata)


def _released_value(metadata: dict, spec):
    """One declared setting from released metadata, converted to its declared type (ValueError if it cannot be)."""
    key, default = spec.metadata["released"], setting_default(spec)
    if spec.name == "apply_gnn_encoders":
        return gnn_encoders_from_metadata(metadata)
    value = metadata.get(key, metadata.get(RELEASED_FALLBACKS.get(spec.name), default))
    if spec.type is int:
        return _integer(key, value)
    if spec.type is float:
        return float(value)
    return list(value) if isinstance(default, list) else str(value)


def _integer(key: str, value) -> int:
    try:
        whole = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return int(value)


def _config_from_metadata(metadata: dict) -> AceLoRAConfig:
    return AceLoRAConfig(**{spec.name: _released_value(metadata, spec) for spec in RELEASED_SETTINGS})


def copy_checked(dst: torch.Tensor, src: Any, where: str, path: str) -> None:
    if not isinstance(src, torch.Tensor):
        raise UserInputError(f"{path}: {where} is missing or not a tensor")
    if tuple(src.shape) != tuple(dst.shape):
        raise UserInputError(f"{path}: {where} has shape {tuple(src.shape)}, the model expects {tuple(dst.shape)} "
                             "(the file was trained with another rank, position, projections or backbone)")
    if src.is_floating_point() and not torch.isfinite(src).all():
        raise UserInputError(f"{path}: {where} holds NaN or infinite values (a diverged or damaged checkpoint)")
    with torch.no_grad():
        dst.copy_(src.to(dst.dtype))


def load_released_weights(model: AceLoRAModel, state: dict, path: str = "checkpoint") -> None:
    """Copy a released-format dict into the model.

    The file must hold exactly the tensors the model has: a missing or extra key, or a wrong shape,
    is an error naming it (a silently ignored tensor would evaluate a different model).
    """
    weights = state["weights"]
    expected: Dict[str, set] = {}
    for layer, proj, factors in released_lora_entries(model.text_lora, model.vision_lora):
        expected.setdefault(layer, set()).add(proj)
        entry = weights.get(layer, {}).get(proj)
        if entry is None:
            raise UserInputError(f"{path}: missing LoRA weights weights['{layer}']['{proj}']")
        copy_checked(factors.lora_A, entry.get("w_lora_A"), f"weights['{layer}']['{proj}']['w_lora_A']", path)
        copy_checked(factors.lora_B, entry.get("w_lora_B"), f"weights['{layer}']['{proj}']['w_lora_B']", path)
    adapters = adapter_modules(model)
    for name, adapter in adapters.items():
        if name not in weights:
            raise UserInputError(f"{path}: missing adapter weights['{name}']")
        for key, tensor in adapter.state_dict().items():
            copy_checked(tensor, weights[name].get(key), f"weights['{name}']['{key}']", path)
    if "logit_scale" not in weights:
        raise UserInputError(f"{path}: missing weights['logit_scale']")
    copy_checked(model.logit_scale.data, torch.as_tensor(weights["logit_scale"]).reshape(()),
                  "weights['logit_scale']", path)
    scalars = {"logit_scale"}
    if model.logit_bias is not None:
        scalars.add("logit_bias")
        if "logit_bias" not in weights:
            raise UserInputError(f"{path}: missing weights['logit_bias'] (the model has a logit bias)")
        copy_checked(model.logit_bias.data, torch.as_tensor(weights["logit_bias"]).reshape(model.logit_bias.shape),
                     "weights['logit_bias']", path)
    extra = sorted(k for k in weights if k not in expected and k not in adapters and k not in scalars)
    extra += sorted(f"{layer}/{proj}" for layer in expected for proj in set(weights[layer]) - expected[layer])
    if extra:
        raise UserInputError(f"{path}: has weights the model does not have: {', '.join(extra)} "
                             "(check --position, --params, --apply-gnn-encoders and the backbone depth)")


def load_released_checkpoint(model: AceLoRAModel, path: str) -> dict:
    """Load a released-format file into an existing model; returns its metadata."""
    state = read_released_checkpoint(path)
    load_released_weights(model, state, path)
    return state.get("metadata", {})


# ---- our training checkpoints' tensors (the run state around them: ace_lora.train.run_state) ----------
def trainable_state_dict(model: AceLoRAModel) -> Dict[str, torch.Tensor]:
    """Only the trained tensors (LoRA, adapters, scale), keyed by module path."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: p.detach().clone() for p in model.trainable_parameters()}


def load_trainable_state_dict(model: AceLoRAModel, state: Dict[str, torch.Tensor], path: str) -> None:
    """Copy our checkpoint's trainables into the model: every one, and nothing else, with its shape."""
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        if name not in params:
            raise UserInputError(f"{path}: parameter {name} does not exist in this model")
        copy_checked(params[name].data, tensor, name, path)
    # a logit bias trains only with a sigmoid loss: without it in the file, the backbone's own stays
    missing = [name for name, p in params.items() if p.requires_grad and name not in state and name != "logit_bias"]
    if missing:
        raise UserInputError(f"{path}: has no value for {missing[0]}" + (f" and {len(missing) - 1} more trained "
                                                                        "tensors" if len(missing) > 1 else ""))


def checkpoint_config(state: Any, path: str) -> AceLoRAConfig:
    """The model configuration that a released weight file or one of our training checkpoints describes."""
    if isinstance(state, dict) and "weights" in state:
        return config_from_metadata(state.get("metadata", {}), source=path)
    if isinstance(state, dict) and "trainable" in state:
        return AceLoRAConfig.from_dict(state["model_config"], path)
    raise UserInputError(f"{path} is neither an ACE-LoRA weight file nor a training checkpoint")


# ---- export folders (written by ace_lora/model/export.py) -----------------------------------------------
EXPORT_CONFIG = "ace_lora_config.json"
ADAPTERS_FILE = "ace_hgnn.safetensors"
EXPORT_FORMAT = "ace-lora-export-1"


def is_export_folder(path: Optional[str]) -> bool:
    return path is not None and os.path.isdir(path) and os.path.isfile(os.path.join(path, EXPORT_CONFIG))


def read_export(folder: str) -> dict:
    with open(os.path.join(folder, EXPORT_CONFIG), encoding="utf-8") as f:
        summary = json.load(f)
    if summary.get("format") != EXPORT_FORMAT:
        raise UserInputError(f"{folder}: not an ACE-LoRA export folder (format {summary.get('format')!r})")
    return summary


def export_config(summary: dict) -> AceLoRAConfig:
    """The model an export folder rebuilds: no LoRA (it is merged), the hypergraph settings it was trained with."""
    trained = AceLoRAConfig.from_dict(summary.get("trained_config", {}), EXPORT_CONFIG)
    return AceLoRAConfig(params=[], **{name: summary.get(name, getattr(trained, name)) for name in HGNN_SETTINGS})


def load_export_trainables(model: AceLoRAModel, folder: str) -> None:
    """Copy the exported adapters and scale into `model` (built with `export_config`); strict."""
    source = os.path.join(folder, ADAPTERS_FILE)
    tensors = load_safetensors(source)
    scale = tensors.get("logit_scale")
    copy_checked(model.logit_scale.data, None if scale is None else scale.reshape(()), "logit_scale", source)
    expected = {"logit_scale"}
    if model.logit_bias is not None:
        bias = tensors.get("logit_bias")
        copy_checked(model.logit_bias.data, None if bias is None else bias.reshape(model.logit_bias.shape),
                     "logit_bias", source)
        expected.add("logit_bias")
    for name, adapter in adapter_modules(model).items():
        for key, value in adapter.state_dict().items():
            copy_checked(value, tensors.get(f"{name}.{key}"), f"{name}.{key}", source)
            expected.add(f"{name}.{key}")
    extra = sorted(set(tensors) - expected)
    if extra:
        raise UserInputError(f"{folder}/{ADAPTERS_FILE}: tensors the model does not have: {', '.join(extra)}")


# ---- one reader for every format --------------------------------------------------------------------
# The declared settings that give the trained tensors their meaning, and their flags (--init-from compares them).
ARCHITECTURE_FLAGS = {spec.name: spec.metadata["flag"] for spec in declared_settings() if spec.metadata["shapes"]}
HGNN_SETTINGS = tuple(spec.name for spec in declared_settings() if spec.metadata["part"] == "hgnn")


@dataclass
class TrainedWeights:
    """What a path holds, whatever its format: the configuration to build, the backbone it needs (None:
    the caller's --model; an export folder is its own), and `load_into(model)` to copy its tensors in."""

    path: str
    kind: str  # "released" | "training" | "export"
    config: AceLoRAConfig
    backbone: Optional[str]
    recorded: Tuple[str, ...]  # the architecture settings the file records (released files omit some)
    state: Any = field(repr=False, default=None)
    architecture: Optional[dict] = None  # the towers it was trained on (ace_lora.model.towers); None: BiomedCLIP's

    def load_into(self, model: AceLoRAModel) -> None:
        check_architecture(model, self.architecture, self.path)
        if self.kind == "export":
            load_export_trainables(model, self.path)
        elif self.kind == "released":
            load_released_weights(model, self.state, self.path)
        else:
            load_trainable_state_dict(model, self.state["trainable"], self.path)


def read_trained(path: str) -> TrainedWeights:
    """The one reader of trained models: a released `.pt`, an `ACE-LoRA_weights_*.pt`, a `checkpoints/*.pt`
    or an export folder (module docstring). A path that is none of them is one UserInputError."""
    if is_export_folder(path):
        summary = read_export(path)
        prefix = TRANSFORMERS_PREFIX if summary.get("backbone_library") == "transformers" else LOCAL_PREFIX
        return TrainedWeights(path, "export", export_config(summary), f"{prefix}{path}", HGNN_SETTINGS,
                              architecture=summary.get("architecture"))
    if os.path.isdir(path):
        raise UserInputError(f"{path} is a folder without {EXPORT_CONFIG}: give a weight file, a training "
                             "checkpoint or an export folder")
    state = load_checkpoint_file(path)
    config = checkpoint_config(state, path)
    if "weights" in state:
        metadata = state.get("metadata", {})
        return TrainedWeights(path, "released", config, None, recorded_settings(metadata), state,
                              metadata.get("architecture"))
    return TrainedWeights(path, "training", config, None, tuple(ARCHITECTURE_FLAGS), state, state.get("architecture"))


def init_trainables_from(model: AceLoRAModel, path: str) -> None:
    """Start from the trained tensors of a weight file or a training checkpoint (--init-from).

    The file's configuration must be the model's (each differing setting is named with its flag);
    shapes are checked tensor by tensor.
    """
    trained = read_trained(path)
    if trained.kind == "export":
        raise UserInputError(f"--init-from {path}: an export folder has its LoRA merged into the backbone; start "
                             "from the checkpoint or weight file it was exported from")
    differs = [f"{flag} {getattr(trained.config, key)} (this run: {getattr(model.config, key)})"
               for key, flag in ARCHITECTURE_FLAGS.items()
               if key in trained.recorded and getattr(trained.config, key) != getattr(model.config, key)]
    if differs:
        raise UserInputError(f"--init-from {path} was trained with " + ", ".join(differs)
                             + "; set the same flags to start from it")
    trained.load_into(model)
