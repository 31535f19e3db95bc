"""Use a trained model on your own images and label names: the Python API behind predict.py.

    import ace_lora
    model = ace_lora.load("ACE_LoRA.pt", model="local-dir:/models/biomedclip")
    probabilities = model.classify(["a.png", "b.dcm"], ["pneumonia", "pleural effusion"])  # (N, C)

Images may be paths (JPEG, PNG, DICOM, ... through the one image loader), PIL images, or tensors:
(3, H, W) or (N, 3, H, W), float in [0, 1] or uint8 in [0, 255], as torchvision's ToTensor gives them.
They go through the model's own evaluation transform and are encoded in batches of `batch_size`.
`classify` scores softmax(s * cosine) with s the base model's exp(logit_scale), as the evaluation
scripts do by default (`logit_scale="learned"` for the trained scale); `templates` are strings with
`{}` for the class name, None meaning the chest X-ray ensemble of the chest data sets.
"""
import glob
import os
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import to_pil_image
from tqdm import tqdm

from ace_lora.data.image_cache import DecodedImages
from ace_lora.data.images import is_dicom, load_image
from ace_lora.data.paths import data_root_for, resolve_path
from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES, prompt_ensemble_embeddings
from ace_lora.data.tables import read_table
from ace_lora.data.transforms import stack_pixels
from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.features import token_grid
from ace_lora.evaluation.figures import save_heatmap_overlay
from ace_lora.evaluation.tasks import LOGIT_SCALES, SOFTMAX
from ace_lora.evaluation.zero_shot import score, temperature
from ace_lora.model.config import BIOMEDCLIP_HUB
from ace_lora.model.factory import load_model_for_eval
from ace_lora.runtime import autocast, resolve_device, resolve_precision

ImageInput = Union[str, os.PathLike, Image.Image, torch.Tensor]


def _tensor_image(image: torch.Tensor) -> Image.Image:
    """A (1 or 3, H, W) tensor as an RGB PIL image: uint8 in 0..255, or float in [0, 1] (ToTensor's range)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise UserInputError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        if not image.is_floating_point():
            raise UserInputError(f"an image tensor must be uint8 (0..255) or float (0..1), not {image.dtype}")
        if not torch.isfinite(image).all():
            raise UserInputError("an image tensor holds NaN or infinite values")
        low, high = image.min().item(), image.max().item()
        if low < 0 or high > 1:
            raise UserInputError(f"a float image tensor must hold values in [0, 1] (as ToTensor gives), got "
                                 f"{low:.4g}..{high:.4g}: divide 0..255 values by 255, or pass uint8")
    return to_pil_image(image.expand(3, -1, -1).cpu()).convert("RGB")


def as_pil_images(images: Union[ImageInput, Sequence[ImageInput]]) -> List[Image.Image]:
    """RGB PIL images from paths, PIL images or (N, 3, H, W) / (3, H, W) tensors (see the module docstring);
    an empty sequence gives an empty list."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    elif isinstance(images, torch.Tensor):
        if images.ndim not in (3, 4):
            raise UserInputError(f"an image tensor must be (3, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
        images = list(images) if images.ndim == 4 else [images]
    elif not isinstance(images, (list, tuple)):
        raise UserInputError(f"cannot use a {type(images).__name__} as images: give a path, a PIL image, a tensor "
                             "or a list of them")
    out = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            out.append(load_image(image))
        elif isinstance(image, Image.Image):
            out.append(image.convert("RGB"))
        elif isinstance(image, torch.Tensor):
            out.append(_tensor_image(image))
        else:
            raise UserInputError(f"cannot use a {type(image).__name__} as an image: give a path, a PIL image or a "
                                 "tensor")
    return out


def as_names(values: Union[str, Sequence[str]], what: str) -> List[str]:
    """A list of non-empty, distinct names; a single string is one name (not one per letter)."""
    names = [values] if isinstance(values, str) else list(values)
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise UserInputError(f"each {what} must be a non-empty string, got {bad[0]!r}")
    seen = set()
    for name in names:
        if name in seen:
            raise UserInputError(f"{what} {name!r} is given twice")
        seen.add(name)
    return names


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Predictor:
    """A model in evaluation mode with batched classify / embed / similarity-map calls."""

    def __init__(self, model, device: torch.device, precision: str = "fp32", batch_size: int = 64,
                 logit_scale: str = "base"):
        if logit_scale not in LOGIT_SCALES:
            raise UserInputError(f"logit_scale must be one of {', '.join(LOGIT_SCALES)}, not {logit_scale!r}")
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().to(device)
        self.embed_dim = model.embed_dim
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.logit_scale = logit_scale

    def _pixel_batches(self, images) -> Iterable[torch.Tensor]:
        """uint8 (B, 3, S, S) batches of `batch_size` through the model's evaluation transform."""
        for chunk in _chunks(as_pil_images(images), self.batch_size):
            yield stack_pixels([self.model.eval_pixels(image) for image in chunk])

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) image embeddings (CPU, float32) of uint8 pixels (B, 1 or 3, S, S); call under no_grad."""
        with autocast(self.device, self.precision):
            return self.model.encode_image(pixels.to(self.device)).float().cpu()

    def _embedding_batches(self, images) -> Iterable[torch.Tensor]:
        for pixels in self._pixel_batches(images):
            yield self._embed(pixels)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """(N, D) refined, L2-normalised image embeddings (CPU, float32); (0, D) for no images."""
        return torch.cat([torch.empty(0, self.embed_dim), *self._embedding_batches(images)])

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, D) refined, L2-normalised text embeddings (CPU, float32); a string is one text, (0, D) for none."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise UserInputError(f"texts must be strings, got a {type(bad[0]).__name__}")
        out = [torch.empty(0, self.embed_dim)]
        for chunk in _chunks(texts, self.batch_size):
            with autocast(self.device, self.precision):
                out.append(self.model.encode_text(self.model.tokenize(chunk).to(self.device)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """(C, D) class embeddings from the prompt ensemble `templates` (None: the chest X-ray one). A single
        string is one class (one template); names must be distinct and non-empty."""
        class_names = as_names(class_names, "class name")
        if not class_names:
            raise UserInputError("no class names given")
        templates = as_names(templates, "template") if templates is not None else list(CHEST_XRAY_TEMPLATES)
        if not templates:
            raise UserInputError("no templates given")
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise UserInputError(f"each template needs exactly one {{}} for the class name: {bad[0]!r}")
        with autocast(self.device, self.precision):
            return prompt_ensemble_embeddings(self.model, class_names, templates, self.device).float().cpu()

    @torch.no_grad()
    def probabilities(self, images, classes: torch.Tensor) -> np.ndarray:
        """(N, C) softmax over the classes of s * cosine(image, class), scored as the evaluation engine does,
        batch by batch: a matrix product's rounding depends on its shape, so equal batches give the
        engine's numbers exactly. (0, C) for no images."""
        scores = [self.pixel_probabilities(pixels, classes) for pixels in self._pixel_batches(images)]
        return np.concatenate([np.empty((0, classes.shape[0]), np.float32), *scores])

    @torch.no_grad()
    def pixel_probabilities(self, pixels: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
        """`probabilities` of one batch of uint8 pixels (B, 1 or 3, S, S) already through the model's evaluation
        transform (`model.eval_pixels`, or an image cache of the `eval` transform)."""
        return score(self._embed(pixels) @ classes.T, SOFTMAX, temperature(self.model, self.logit_scale)).numpy()

    def classify(self, images, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> np.ndarray:
        """(N, C) probabilities: softmax over the classes of s * cosine(image, class)."""
        return self.probabilities(images, self.class_embeddings(class_names, templates))

    def similarity_maps(self, images, texts: Sequence[str]) -> List[np.ndarray]:
        """Per image a (T, H, W) map: the cosine between each refined patch token and each text's
        embedding, bilinearly upsampled from the patch grid to the image's own size ((0, H, W) for no text)."""
        return self.maps_to(images, self.embed_texts(texts))

    @torch.no_grad()
    def maps_to(self, images, embeddings: torch.Tensor) -> List[np.ndarray]:
        """`similarity_maps` against given (T, D) embeddings (texts, or class prompt ensembles)."""
        texts_emb = F.normalize(embeddings.float(), dim=-1)
        pil = as_pil_images(images)
        if len(texts_emb) == 0:  # no text: a (0, H, W) map per image, as embed_texts gives (0, D)
            return [np.zeros((0, image.size[1], image.size[0]), np.float32) for image in pil]
        maps = []
        for chunk in _chunks(pil, self.batch_size):
            batch = stack_pixels([self.model.eval_pixels(image) for image in chunk]).to(self.device)
            with autocast(self.device, self.precision):
                grid = token_grid(self.model, batch, "hgnn").float().cpu()  # (B, D, h, w)
            cosine = torch.einsum("bdhw,td->bthw", F.normalize(grid, dim=1), texts_emb)  # (B, T, h, w)
            for image, image_maps in zip(chunk, cosine):
                width, height = image.size
                maps.append(F.interpolate(image_maps[None], size=(height, width), mode="bilinear",
                                          align_corners=False)[0].numpy())
        return maps


def load(checkpoint: Optional[str] = None, model: str = BIOMEDCLIP_HUB, device: str = "auto",
         precision: str = "fp32", batch_size: int = 64, logit_scale: str = "base") -> Predictor:
    """A Predictor for a released weight file, one of our checkpoints, an exported folder, or (None)
    the bare BiomedCLIP backbone `model`. fp32 by default, as the release evaluated ('bf16' / 'auto' for speed)."""
    resolved = resolve_device(device)
    net = load_model_for_eval(model, checkpoint, device=resolved)
    return Predictor(net, resolved, resolve_precision(precision, resolved), batch_size, logit_scale)


# --------------------------------------------------------------------------- files in, files out (predict.py)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")
# predictions.csv's own columns: class names may not take them (the image paths would be lost).
PREDICTION_COLUMNS = ("path", "predicted")
# What predict.py writes into --output-dir: a folder holding any of them holds a previous prediction.
PREDICT_FILES = ("predictions.csv", "unreadable.csv", "heatmaps.csv", "config.yaml")


def _folder_images(folder: str) -> Tuple[List[str], List[str]]:
    """(images, other files) below `folder`, sorted: image suffixes, and DICOM files by their DICM prefix
    whatever their name (DICOM files often have none, or numeric ones such as 1.2.840.113619.2.55)."""
    images, others = [], []
    for path in sorted(os.path.join(d, name) for d, _, names in os.walk(folder) for name in names):
        (images if path.lower().endswith(IMAGE_SUFFIXES) or is_dicom(path) else others).append(path)
    return images, others


def collect_images(inputs: Sequence[str], csv: Optional[str] = None, column: str = "Path",
                   data_root: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(image paths, files skipped in folders) from folders (searched recursively: IMAGE_SUFFIXES and DICOM
    files by content), glob patterns and files, or from a CSV column (relative paths start at `data_root`,
    default: the CSV's folder). Order: as given, each folder and glob sorted."""
    paths: List[str] = []
    skipped: List[str] = []
    if csv is not None:
        table = read_table(csv, (column,), dtype={column: str})
        root = data_root_for(csv, data_root)
        paths += [resolve_path(p, root) for p in table[column] if not pd.isna(p)]
    for item in inputs:
        if os.path.isdir(item):
            found, others = _folder_images(item)
            if not found:
                raise UserInputError(f"{item}: no images in this folder or below (looked for "
                                     f"{', '.join(IMAGE_SUFFIXES)} and DICOM files)")
            paths += found
            skipped += others
        elif any(ch in item for ch in "*?["):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise UserInputError(f"{item}: the pattern matches no file")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserInputError(f"{item}: no such file or folder")
    if not paths:
        raise UserInputError("no images given: name folders, files or glob patterns, or --csv with --column")
    return paths, skipped


def check_class_columns(class_names: Sequence[str]) -> None:
    """No class may be named as one of predictions.csv's own columns (PREDICTION_COLUMNS)."""
    taken = [n for n in class_names if n in PREDICTION_COLUMNS]
    if taken:
        raise UserInputError(f"class {taken[0]!r} is the name of a predictions.csv column "
                             f"({', '.join(PREDICTION_COLUMNS)}): rename it")


def read_names(values: Sequence[str], what: str) -> List[str]:
    """Names given on the command line, or one per line of a text file (a single value ending in .txt):
    non-empty and distinct."""
    if len(values) == 1 and values[0].lower().endswith(".txt"):
        if not os.path.isfile(values[0]):
            raise UserInputError(f"{what} file not found: {values[0]}")
        with open(values[0], encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise UserInputError(f"{what} file {values[0]} has no names (one per line)")
    else:
        names = list(values)
    return as_names(names, what)


def check_prediction_folder(output_dir: str, overwrite: bool) -> None:
    """Refuse a --output-dir that holds a previous prediction unless --overwrite; with it, remove that
    prediction's files (and the heatmaps its heatmaps.csv lists) so that nothing of it stays mixed in."""
    present = [name for name in PREDICT_FILES if os.path.lexists(os.path.join(output_dir, name))]
    if not present:
        return
    if not overwrite:
        raise UserInputError(f"--output-dir {output_dir} holds a previous prediction ({', '.join(present)}): "
                             "choose another --output-dir, or --overwrite to replace it")
    listing = os.path.join(output_dir, "heatmaps.csv")
    if os.path.isfile(listing):
        for path in pd.read_csv(listing, dtype=str)["heatmap"]:
            if os.path.isfile(path):
                os.remove(path)
    for name in present:
        os.remove(os.path.join(output_dir, name))


def _read_readable(source, indices: Sequence[int], paths: Sequence[str],
                   skip_unreadable: bool) -> Tuple[List[int], List[torch.Tensor], List[tuple]]:
    """(positions in `indices`, uint8 pixels, [(path, error)]) of one batch of an image source."""
    positions, pixels, failed = [], [], []
    for position, index in enumerate(indices):
        try:
            pixels.append(source[index])
            positions.append(position)
        except UserInputError as error:
            if not skip_unreadable:
                raise UserInputError(f"{error} (pass --skip-unreadable to list and skip such files)") from None
            failed.append((paths[index], str(error)))
    return positions, pixels, failed


def predict_files(predictor: Predictor, paths: Sequence[str], class_names: Sequence[str],
                  templates: Optional[Sequence[str]], output_dir: str, heatmaps_dir: Optional[str] = None,
                  skip_unreadable: bool = False, progress: bool = True, pixels=None) -> dict:
    """predictions.csv (path, one probability column per class, predicted), unreadable.csv when files
    were skipped, and with `heatmaps_dir` one overlay PNG per image and class, listed in heatmaps.csv
    (path, class, heatmap). `pixels`: the images' pixels from an image cache of the `eval` transform
    (data/image_cache.py; the overlays still read the files). Returns a summary."""
    class_names = as_names(class_names, "class")
    check_class_columns(class_names)
    classes = predictor.class_embeddings(class_names, templates)  # (C, D)
    source = pixels if pixels is not None else DecodedImages(paths, predictor.model.eval_pixels)
    rows, unreadable, heatmaps = [], [], []
    batches = list(_chunks(range(len(paths)), predictor.batch_size))
    for number, indices in enumerate(tqdm(batches, desc="predict", unit="batch", disable=not progress)):
        batch = [paths[index] for index in indices]
        positions, read, failed = _read_readable(source, indices, paths, skip_unreadable)
        unreadable += failed
        if not read:
            continue
        probabilities = predictor.pixel_probabilities(stack_pixels(read), classes)
        for position, probs in zip(positions, probabilities):
            rows.append({"path": batch[position], **dict(zip(class_names, map(float, probs))),
                         "predicted": class_names[int(np.argmax(probs))]})
        if heatmaps_dir is not None:
            images = [load_image(batch[position]) for position in positions]
            for position, image, maps in zip(positions, images, predictor.maps_to(images, classes)):
                image_number = number * predictor.batch_size + position
                for class_number, (name, heat) in enumerate(zip(class_names, maps)):
                    target = heatmap_path(heatmaps_dir, image_number, batch[position], class_number, name)
                    save_heatmap_overlay(image, heat, target, title=f"{os.path.basename(batch[position])}: {name}")
                    heatmaps.append((batch[position], name, target))
    if not rows:
        raise UserInputError(f"none of the {len(paths)} images could be read")
    os.makedirs(output_dir, exist_ok=True)
    pd.DataFrame(rows, columns=["path", *class_names, "predicted"]).to_csv(
        os.path.join(output_dir, "predictions.csv"), index=False)
    if unreadable:
        pd.DataFrame(unreadable, columns=["path", "error"]).to_csv(os.path.join(output_dir, "unreadable.csv"),
                                                                   index=False)
    if heatmaps:
        pd.DataFrame(heatmaps, columns=["path", "class", "heatmap"]).to_csv(os.path.join(output_dir, "heatmaps.csv"),
                                                                            index=False)
    return {"n_images": len(paths), "n_predicted": len(rows), "n_unreadable": len(unreadable)}


def heatmap_path(folder: str, image_number: int, image_path: str, class_number: int, class_name: str) -> str:
    """<folder>/<image number>_<file stem>__<class number>_<class>.png: unique per (input, class) even when
    stems or class names agree after characters other than letters, digits, - and _ become _."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{stem}__{class_number:02d}_{class_name}")
    return os.path.join(folder, f"{image_number:05d}_{safe}.png")
