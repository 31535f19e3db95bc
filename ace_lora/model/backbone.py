"""Loading the frozen backbone: BiomedCLIP by default, any open_clip model by name, or a transformers CLIP/SigLIP.

Model names: `hf-hub:ID`, `local-dir:PATH`, or an open_clip model name (`ViT-B-16`, see
`open_clip.list_models()`) with an optional pretrained tag after `@` (`ViT-B-16@openai`; the command lines'
`--pretrained TAG` appends it, `model_spec`). A name without a tag has random weights. Unknown names and
tags are refused in one line, with open_clip's close matches or the model's tags.

`hf:NAME_OR_FOLDER` is a Hugging Face transformers model (`load_transformers_backbone`): `CLIPModel` (PLIP,
PubMedCLIP, OpenAI's CLIP) or `SiglipModel` (MedSigLIP), from a Hub id or a folder that
`save_pretrained` wrote (config.json, weights, tokenizer and image-processor files). Images are prepared by
its own image processor (the default, torchvision backend), text by its own tokenizer, padded to the text
tower's length (SigLIP was trained on max-length padding; CLIP's causal mask keeps the pooled end-of-text token
independent of what follows it). `Siglip2Model` is not supported: its NaFlex inputs (variable resolution with a
pixel attention mask and spatial shapes) do not fit the fixed square input every part of this project shares.

A local folder (`local-dir:PATH`) must load with no network at all. open_clip's text tower reads the
BERT config from `text_cfg.hf_model_name`, which in BiomedCLIP's config is a hub id; when PATH itself
holds the BERT `config.json` (see docs/installation.md: "A local BiomedCLIP folder"), that name is pointed at PATH
through open_clip's public `text_cfg` override instead.
"""
import contextlib
import difflib
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Tuple
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn

from ace_lora.errors import UserInputError
from ace_lora.model.config import BIOMEDCLIP_HUB, HUB_PREFIX, LOCAL_PREFIX, TAG_SEPARATOR, TRANSFORMERS_PREFIX


@dataclass
class Backbone:
    clip: nn.Module  # open_clip CLIP or CustomTextCLIP (BiomedCLIP: .visual TimmModel, .text HFTextEncoder), or a
    # transformers CLIPModel / SiglipModel
    preprocess: Callable  # PIL image -> (3, H, W) tensor, the model's own evaluation transform
    tokenizer: Callable  # list[str] -> (B, context_length) LongTensor
    processor_files: Optional[Tuple[object, ...]] = None  # a transformers model's tokenizer and image processor
    # (export writes them beside the merged weights)


TRANSFORMERS_MODEL_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel"}  # config.model_type -> the class loaded


class TransformersTokenizer:
    """A transformers tokenizer as this project's tokenizer: texts -> (B, L) ids, padded to the text tower's
    length L and truncated to it (picklable, for the DataLoader workers)."""

    def __init__(self, tokenizer, length: int):
        self.tokenizer, self.context_length = tokenizer, length

    def __call__(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, padding="max_length", max_length=self.context_length, truncation=True,
                              return_tensors="pt")["input_ids"]


def _transformers_source(model_name: str) -> Tuple[str, bool]:
    """(Hub id or folder, whether it is a folder) of `hf:NAME_OR_FOLDER`."""
    source = os.path.expanduser(model_name[len(TRANSFORMERS_PREFIX):])
    if not source:
        raise UserInputError("--model hf: needs a Hub id or a folder after it (hf:google/medsiglip-448, hf:PATH)")
    if os.path.isdir(source):
        return source, True
    if source.startswith((".", "/", "~")) or source.count("/") > 1:  # a path, not an `org/name` Hub id
        raise UserInputError(f"model folder not found: {source}")
    return source, False


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars or advisory warnings from transformers while a model is read or written (the command
    lines show their own progress and one line per problem)."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_transformers_backbone(model_name: str, device: str = "cpu") -> Backbone:
    """A transformers CLIPModel / SiglipModel with its tokenizer and image processor (module docstring), in fp32
    whatever dtype its weights were saved in (as open_clip loads)."""
    source, is_folder = _transformers_source(model_name)
    if not is_folder:
        check_hub_reachable(model_name, source, files=("config.json",), local_form="--model hf:FOLDER")
    with quiet_transformers():  # its own advice and progress bars; every problem is one line below
        return _load_transformers(model_name, source, is_folder, device)


def _load_transformers(model_name: str, source: str, is_folder: bool, device: str) -> Backbone:
    import transformers
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from ace_lora.data.transforms import processor_preprocess
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        if is_folder:
            raise UserInputError(f"could not load {model_name}: the folder has no readable config.json "
                                 f"({str(err).splitlines()[0]})") from None
        raise UserInputError(f"could not download {model_name} from the Hub ({str(err).splitlines()[0]}): without "
                             "network, download it once and pass --model hf:FOLDER; a gated model (MedSigLIP) needs "
                             "its terms accepted on the Hub and a login (hf auth login)") from None
    kind = TRANSFORMERS_MODEL_TYPES.get(config.model_type)
    if kind is None:
        name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        reason = (" (its NaFlex variable-resolution inputs do not fit this project's fixed square input)"
                  if config.model_type == "siglip2" else "")
        raise UserInputError(f"{model_name} is a {name} (model type {config.model_type!r}){reason}; supported "
                             f"transformers models: {', '.join(TRANSFORMERS_MODEL_TYPES.values())} (image and text "
                             "towers in one model)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise UserInputError(f"{model_name}: no tokenizer could be loaded (the folder needs the tokenizer files that "
                             f"save_pretrained writes: {str(err).splitlines()[0]})") from None
    if tokenizer.pad_token is None:  # some CLIP fine-tunes: pad with end-of-text, as OpenAI's CLIP tokenizer does
        tokenizer.pad_token = tokenizer.eos_token
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise UserInputError(f"{model_name}: no image processor could be loaded (the folder needs "
                             f"preprocessor_config.json: {str(err).splitlines()[0]})") from None
    size = config.vision_config.image_size
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    out = {k: v for k, v in dict(crop or processor.size).items() if v is not None}
    if out != {"height": size, "width": size}:  # the square the position embeddings were made for
        raise UserInputError(f"{model_name}: its image processor makes {out} images, the image tower takes {size} x "
                             f"{size} (its position embeddings)")
    try:
        clip, info = getattr(transformers, kind).from_pretrained(source, config=config, dtype=torch.float32,
                                                                  output_loading_info=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise UserInputError(f"could not load the weights of {model_name}: {str(err).splitlines()[0]}") from None
    broken = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if broken:
        raise UserInputError(f"{model_name}: its weights do not fit its config.json ({len(broken)} tensor(s) missing "
                             f"or of another shape, e.g. {broken[0]}): they would be random")
    clip.to(device).requires_grad_(False)
    clip.eval()
    text = TransformersTokenizer(tokenizer, config.text_config.max_position_embeddings)
    return Backbone(clip=clip, preprocess=processor_preprocess(processor, size), tokenizer=text,
                    processor_files=(tokenizer, processor))


def _local_text_override(folder: str) -> dict:
    """`text_cfg` override that points the BERT config and tokenizer at the local folder."""
    config_path = os.path.join(folder, "open_clip_config.json")
    if not os.path.isfile(config_path):
        raise UserInputError(f"{folder} has no open_clip_config.json; it is not an open_clip model folder")
    with open(config_path, encoding="utf-8") as f:
        text_cfg = dict(json.load(f)["model_cfg"]["text_cfg"])
    hf_name = text_cfg.get("hf_model_name")
    if hf_name is None or os.path.isdir(hf_name):
        return {}
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UserInputError(
            f"{folder}: the text tower's BERT config '{hf_name}' is a hub id and the folder has no config.json; "
            "download it into the folder once (docs/installation.md)")
    text_cfg["hf_model_name"] = os.path.abspath(folder)
    text_cfg["hf_tokenizer_name"] = os.path.abspath(folder)
    return {"text_cfg": text_cfg}


def named_model(spec: str) -> tuple:
    """(open_clip name, pretrained tag or None, quick_gelu) of a plain model name, checked against open_clip's
    lists. quick_gelu: the tag's weights were trained with QuickGELU (OpenAI's), which the model's own config
    may not say (open_clip only warns), so it is forced."""
    name, _, tag = spec.partition(TAG_SEPARATOR)
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=4)
        raise UserInputError(f"unknown model {name!r}" + (f" (close: {', '.join(close)})" if close else "")
                             + "; see open_clip.list_models(), or use hf-hub:ID / local-dir:PATH")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag and tag not in tags:
        raise UserInputError(f"{name} has no pretrained weights {tag!r}; its tags: {', '.join(tags) or 'none'}")
    quick_gelu = bool(tag) and bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
    return name, tag or None, quick_gelu


HUB_PROBE_TIMEOUT_S = 3.0  # offline, the hub client's own retries take 30-60 s before they give up
HUB_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _hub_repo(model_name: str, name: str, pretrained) -> Optional[str]:
    """The Hugging Face repository the model's files come from (None: nothing to download)."""
    if model_name.startswith(HUB_PREFIX):
        return model_name[len(HUB_PREFIX):]
    if pretrained:
        return (open_clip.get_pretrained_cfg(name, pretrained).get("hf_hub") or "").strip("/") or None
    return None


def hub_endpoint() -> str:
    return hub_constants.ENDPOINT


def check_hub_reachable(model_name: str, repo: Optional[str], files: Tuple[str, ...] = HUB_FILES,
                        local_form: str = "--model local-dir:PATH") -> None:
    """Fail within seconds, not after the hub client's retries, when the model must be downloaded and the hub
    cannot be reached (a cached copy is used as it is). Nothing to check offline (HF_HUB_OFFLINE)."""
    if repo is None or hub_constants.HF_HUB_OFFLINE:
        return
    endpoint = urlparse(hub_endpoint())
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return
    except OSError:
        pass
    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in files):
        print(f"note: {endpoint.hostname} cannot be reached; using the cached {repo} (HF_HUB_OFFLINE=1 skips the "
              "network at once)", file=sys.stderr)
        return
    raise UserInputError(f"could not download {model_name}: {endpoint.hostname} cannot be reached and {repo} is not "
                         f"in the local cache; download it once where there is network (or copy its folder) and pass "
                         f"{local_form} (docs/installation.md)")


def load_backbone(model_name: str = BIOMEDCLIP_HUB, device: str = "cpu") -> Backbone:
    """Create the model, its evaluation preprocessing and tokenizer; all weights frozen."""
    if model_name.startswith(TRANSFORMERS_PREFIX):
        return load_transformers_backbone(model_name, device)
    overrides, name, pretrained = {}, model_name, None
    if model_name.startswith(LOCAL_PREFIX):
        folder = model_name[len(LOCAL_PREFIX):]
        if not os.path.isdir(folder):
            raise UserInputError(f"model folder not found: {folder}")
        overrides = _local_text_override(folder)
    elif not model_name.startswith(HUB_PREFIX):
        name, pretrained, quick_gelu = named_model(model_name)
        overrides = {"force_quick_gelu": True} if quick_gelu else {}
        if pretrained is None:
            print(f"note: {name} with random weights (give --pretrained TAG for trained ones)", file=sys.stderr)
    check_hub_reachable(model_name, _hub_repo(model_name, name, pretrained))
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device,
                                                                    **overrides)
        tokenizer = open_clip.get_tokenizer(name)
    except (OSError, RuntimeError, ValueError) as err:
        if model_name.startswith(HUB_PREFIX) or pretrained:
            raise UserInputError(
                f"could not load {model_name} ({type(err).__name__}: its weights come from the network); without "
                "network, download them once and pass --model local-dir:PATH (docs/installation.md)") from err
        raise UserInputError(f"could not load model {model_name}: {str(err).splitlines()[0]}") from err
    clip.requires_grad_(False)
    clip.eval()
    logging.getLogger(__name__).info("loaded backbone %s", model_name)
    return Backbone(clip=clip, preprocess=preprocess, tokenizer=tokenizer)
