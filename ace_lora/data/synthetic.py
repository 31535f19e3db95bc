"""A small synthetic MIMIC-style data set for the demo: X-ray-like images, reports and CheXpert labels.

Every image is a grey chest-like picture (body, two dark lung fields, spine, heart, noise) showing one
of the five CheXpert competition findings as its own visual pattern:

| finding          | pattern                                                           |
|------------------|-------------------------------------------------------------------|
| Atelectasis      | a bright thin horizontal band low in the right lung (image left)  |
| Cardiomegaly     | the heart shadow enlarged and brighter                            |
| Consolidation    | a bright dense blob high in the left lung (image right)           |
| Edema            | fine bright streaks over both lungs                                |
| Pleural Effusion | both lung bases filled in bright, with a curved upper edge         |

Its report names the finding. A text tower trained from scratch has no language prior, so part of
the training reports use the zero-shot prompt wordings ("a chest X-ray image of edema.",
"Findings suggesting edema.") and the rest vary ("There is edema.", "The heart is enlarged."): the
learned text embedding of a class name then transfers to the prompts.

Written files (paths relative to the output folder):
- `train.csv`: `image_path, report`, the 14 labels in MIMIC order (0/1), `split` (all `train`), images
  under `mimic/`;
- `chexpert_5x200.csv`: the held-out split in the CheXpert 5x200 layout (leading unnamed index column,
  Path, Sex, Age, Frontal/Lateral, AP/PA, 14 labels in CheXpert order, Report Impression), images under
  `CheXpert-v1.0/valid/`, so that the `chexpert` zero-shot task reads it with the output folder as root.
"""
import os
import re
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from ace_lora.data.labels import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_FILE_LABELS,
    CHEXPERT_LABELS,
    RSNA_CLASSES,
    SIIM_CLASSES,
)
from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES, class_major_prompts

DEMO_FINDINGS = CHEXPERT_5X200_CLASSES
# Reports: "{f}" is the finding in lower case. The first two are the zero-shot prompt wordings.
SHARED_TEMPLATES = ("a chest X-ray image of {f}.", "Findings suggesting {f}.", "There is {f}.",
                    "Findings consistent with {f}.", "Mild {f}.", "Moderate {f} is present.", "Evidence of {f}.")
SPECIFIC_REPORTS = {
    "Atelectasis": ("Right basilar atelectasis.", "Plate-like atelectasis at the right base."),
    "Cardiomegaly": ("The heart is enlarged.", "Enlarged cardiac silhouette, cardiomegaly."),
    "Consolidation": ("Focal consolidation in the left upper lobe.", "Dense left upper lobe consolidation."),
    "Edema": ("Pulmonary edema.", "Diffuse interstitial edema in both lungs."),
    "Pleural Effusion": ("Bilateral pleural effusion.", "Small pleural effusion at both bases."),
}
PROMPT_FRACTION = 0.4  # share of training reports that use one of the two prompt wordings
PREAMBLES = ("", "", "Frontal view of the chest. ", "Comparison with the prior study. ")


@dataclass
class DemoDataset:
    train_csv: str
    data_root: str
    test_csv: str  # CheXpert 5x200 layout; image paths relative to `data_root`
    vocabulary: List[str]  # every word of the reports and the zero-shot prompts (for a tiny tokenizer)
    n_train: int
    n_test: int


# --------------------------------------------------------------------------- images


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """(H, W) bool mask of an axis-aligned ellipse."""
    y, x = np.mgrid[0:h, 0:w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _blob(h: int, w: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """(H, W) soft Gaussian blob, peak 1."""
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius ** 2))


def render_chest_xray(finding: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """(size, size) uint8 image of a chest-like picture with `finding`'s pattern; positions jitter by a few %."""
    s = float(size)
    jy, jx = rng.uniform(-0.03, 0.03, size=2) * s
    img = np.full((size, size), 0.08)
    img[_ellipse(size, size, 0.55 * s + jy, 0.5 * s + jx, 0.48 * s, 0.44 * s)] = 0.45  # body
    lungs = [(0.32, -1), (0.68, 1)]  # (centre x, side): image left = patient's right lung
    lung_masks = []
    for cx, _ in lungs:
        mask = _ellipse(size, size, 0.48 * s + jy, cx * s + jx, 0.30 * s, 0.14 * s)
        lung_masks.append(mask)
        img[mask] = 0.18
    img[:, int(0.47 * s + jx):int(0.53 * s + jx)] += 0.15  # spine
    heart_radius, heart_level = 0.10 * s, 0.22
    if finding == "Cardiomegaly":
        heart_radius, heart_level = 0.19 * s, 0.40
    img += heart_level * _blob(size, size, 0.66 * s + jy, 0.56 * s + jx, heart_radius)

    both_lungs = lung_masks[0] | lung_masks[1]
    if finding == "Atelectasis":
        band = np.zeros_like(img)
        top = int(0.62 * s + jy)
        band[top:top + max(2, size // 20), int(0.20 * s + jx):int(0.44 * s + jx)] = 0.55
        img += band
    elif finding == "Consolidation":
        img += 0.6 * _blob(size, size, 0.32 * s + jy, 0.68 * s + jx, 0.08 * s)
    elif finding == "Edema":
        phase = rng.uniform(0, 2 * np.pi)
        x = np.arange(size)[None, :]
        streaks = 0.5 * (1 + np.sin(2 * np.pi * x / max(size / 12, 3) + phase))  # vertical stripes
        img += 0.25 * streaks * both_lungs
    elif finding == "Pleural Effusion":
        y, x = np.mgrid[0:size, 0:size]
        level = 0.62 * s + jy + 0.05 * s * np.cos(np.pi * (x - jx) / s * 4)  # meniscus
        img[(y > level) & both_lungs] += 0.45
    elif finding != "Cardiomegaly":  # drawn above, with the heart
        raise ValueError(f"unknown demo finding {finding!r}")

    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)  # exposure
    img += rng.normal(0, 0.04, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- reports


def synthetic_report(finding: str, rng: np.random.Generator) -> str:
    name = finding.lower()
    if rng.random() < PROMPT_FRACTION:
        sentence = SHARED_TEMPLATES[rng.integers(2)].format(f=name)
    else:
        choices = SHARED_TEMPLATES[2:] + SPECIFIC_REPORTS[finding]
        sentence = choices[rng.integers(len(choices))].format(f=name)
        sentence = sentence[0].upper() + sentence[1:]
    return PREAMBLES[rng.integers(len(PREAMBLES))] + sentence


def demo_vocabulary(extra_texts: Sequence[str] = ()) -> List[str]:
    """Every word that a demo report or a chest X-ray zero-shot prompt can contain."""
    texts = [t.format(f=f.lower()) for f in DEMO_FINDINGS for t in SHARED_TEMPLATES]
    texts += [r for reports in SPECIFIC_REPORTS.values() for r in reports] + list(PREAMBLES)
    chest_classes = CHEXPERT_5X200_CLASSES + RSNA_CLASSES + SIIM_CLASSES
    texts += class_major_prompts(chest_classes, CHEST_XRAY_TEMPLATES) + list(extra_texts)
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


# --------------------------------------------------------------------------- files


def _save(image: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image, mode="L").save(path, quality=95)


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> str:
    """A DICOM file of `pixels` ((H, W) uint8 or uint16; 8-bit MONOCHROME2 is RSNA's stage_2_train_images
    format) with extra `tags` (e.g. WindowCenter=...); returns the path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.set_pixel_data(pixels, photometric, bits_stored=pixels.itemsize * 8)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _one_hot(finding: str, columns: Sequence[str]) -> List[float]:
    return [1.0 if column == finding else 0.0 for column in columns]


def write_demo_dataset(out_dir: str, n_train: int = 600, n_test_per_class: int = 20, image_size: int = 64,
                       seed: int = 0) -> DemoDataset:
    """Write the training and held-out splits under `out_dir` (see the module docstring); deterministic."""
    rng = np.random.default_rng(seed)
    train_rows = []
    for i in range(n_train):
        finding = DEMO_FINDINGS[i % len(DEMO_FINDINGS)]
        rel = f"mimic/p{10 + i % 10}/s{50000000 + i}/{i:06d}.jpg"
        _save(render_chest_xray(finding, rng, image_size), os.path.join(out_dir, rel))
        train_rows.append({"image_path": rel, "report": synthetic_report(finding, rng),
                           **dict(zip(CHEXPERT_LABELS, _one_hot(finding, CHEXPERT_LABELS))), "split": "train"})
    train_csv = os.path.join(out_dir, "train.csv")
    pd.DataFrame(train_rows).to_csv(train_csv, index=False)

    test_rows = []
    for i in range(n_test_per_class * len(DEMO_FINDINGS)):
        finding = DEMO_FINDINGS[i % len(DEMO_FINDINGS)]
        rel = f"CheXpert-v1.0/valid/patient{i:05d}/study1/view1_frontal.jpg"
        _save(render_chest_xray(finding, rng, image_size), os.path.join(out_dir, rel))
        test_rows.append({"Path": rel, "Sex": "Female" if i % 2 else "Male", "Age": 40 + i % 40,
                          "Frontal/Lateral": "Frontal", "AP/PA": "AP",
                          **dict(zip(CHEXPERT_FILE_LABELS, _one_hot(finding, CHEXPERT_FILE_LABELS))),
                          "Report Impression": f"\n1. {finding.lower()}.\n"})
    test_csv = os.path.join(out_dir, "chexpert_5x200.csv")
    pd.DataFrame(test_rows).to_csv(test_csv)  # keeps the leading unnamed index column
    return DemoDataset(train_csv=train_csv, data_root=out_dir, test_csv=test_csv,
                       vocabulary=demo_vocabulary([r["report"] for r in train_rows]), n_train=n_train,
                       n_test=len(test_rows))
