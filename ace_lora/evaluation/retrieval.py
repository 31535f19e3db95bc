"""Image-text retrieval on a CSV of image paths and report texts (CheXpert 5x200 with its impressions,
a MIMIC-CXR test split, or any CSV with an image and a text column).

Protocol:
- Reports are de-duplicated by their exact (whitespace-normalised) text: the gallery of image->text
  holds each distinct report once, and an image's correct reports are those equal to its own. For
  text->image every distinct report is one query, and every image paired with that text is correct.
  (Many MIMIC/CheXpert impressions are identical, e.g. "No acute cardiopulmonary process."; without
  this, identical texts would count as wrong answers and ranks would depend on row order.)
- rank = 1 + the number of wrong items scored strictly higher than the best correct one; Recall@K
  is the share of queries with rank <= K; mean and median rank over queries.
- Precision@K (class-aware, the GLoRIA protocol), where each row has one class: the share of the top K
  retrieved items whose class equals the query's class (a report's class is that of its first row).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ace_lora.data.eval_dataset import ImageListDataset, collate_eval_items
from ace_lora.data.image_cache import image_source
from ace_lora.data.labels import CHEXPERT_5X200_CLASSES
from ace_lora.data.paths import data_root_for, resolve_path
from ace_lora.data.tables import read_table, row_name
from ace_lora.errors import UserInputError
from ace_lora.runtime import autocast, resolve_device, resolve_precision

RECALL_KS = (1, 5, 10)
IMAGE_COLUMNS = ("Path", "image_path")
TEXT_COLUMNS = ("Report Impression", "report")


def retrieval_columns(header: Sequence[str], image_column: Optional[str] = None,
                      text_column: Optional[str] = None, source: str = "CSV") -> Tuple[str, str]:
    """The image and text columns: given, or the first of IMAGE_COLUMNS / TEXT_COLUMNS that exists."""
    def pick(given, candidates, what):
        if given is not None:
            if given not in header:
                raise UserInputError(f"{source}: no {what} column {given!r} (found: {', '.join(header)})")
            return given
        found = next((c for c in candidates if c in header), None)
        if found is None:
            raise UserInputError(f"{source}: no {what} column (looked for {', '.join(candidates)}; found: "
                                 f"{', '.join(header)})")
        return found
    return pick(image_column, IMAGE_COLUMNS, "image"), pick(text_column, TEXT_COLUMNS, "report text")


def ranks_of(similarity: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(Q,) 1-based rank of each query's best correct item: 1 + wrong items scored strictly higher."""
    best = np.where(correct, similarity, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    return 1 + ((similarity > best) & ~correct).sum(axis=1)


def precision_at_k(similarity: np.ndarray, query_classes: np.ndarray, item_classes: np.ndarray, k: int) -> float:
    """Mean share of each query's top-k items whose class is the query's class."""
    k = min(k, similarity.shape[1])
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # (Q, k)
    return float((item_classes[top] == query_classes[:, None]).mean())


def rank_summary(ranks: np.ndarray, prefix: str, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    out = {f"{prefix}_recall@{k}": float((ranks <= k).mean()) for k in ks}
    out.update({f"{prefix}_mean_rank": float(ranks.mean()), f"{prefix}_median_rank": float(np.median(ranks))})
    return out


@dataclass
class RetrievalResult:
    metrics: dict
    ranks: pd.DataFrame  # one row per query: direction, query, rank


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, texts: Sequence[str],
                      classes: Optional[Sequence] = None, image_ids: Optional[Sequence[str]] = None,
                      ks: Sequence[int] = RECALL_KS) -> RetrievalResult:
    """Metrics of paired rows: image_emb (N, D) and text_emb (N, D) normalised, texts (N,) for the
    de-duplication, classes (N,) or None. See the module docstring."""
    normalised = [" ".join(str(t).split()) for t in texts]
    unique, text_of_row = np.unique(np.array(normalised, dtype=object), return_inverse=True)
    first_row = np.array([normalised.index(t) for t in unique])
    gallery = text_emb[first_row]  # (U, D): one embedding per distinct report
    i2t = image_emb @ gallery.T  # (N, U)
    i2t_correct = text_of_row[:, None] == np.arange(len(unique))[None, :]
    t2i = i2t.T  # (U, N): each distinct report against every image
    t2i_ranks, i2t_ranks = ranks_of(t2i, i2t_correct.T), ranks_of(i2t, i2t_correct)
    metrics = {"n_images": int(len(image_emb)), "n_distinct_reports": int(len(unique)),
               **rank_summary(i2t_ranks, "i2t", ks), **rank_summary(t2i_ranks, "t2i", ks)}
    if classes is not None:
        classes = np.asarray(classes)
        for k in ks:
            metrics[f"i2t_precision@{k}"] = precision_at_k(i2t, classes, classes[first_row], k)
            metrics[f"t2i_precision@{k}"] = precision_at_k(t2i, classes[first_row], classes, k)
    image_ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(image_emb))]
    ranks = pd.concat([
        pd.DataFrame({"direction": "image_to_text", "query": image_ids, "rank": i2t_ranks}),
        pd.DataFrame({"direction": "text_to_image", "query": list(unique), "rank": t2i_ranks})],
        ignore_index=True)
    return RetrievalResult(metrics=metrics, ranks=ranks)


def one_class_per_row(table: pd.DataFrame, source: str, class_columns: Sequence[str] = CHEXPERT_5X200_CLASSES,
                      id_column: str = "Path") -> Optional[np.ndarray]:
    """The class of each row when the CSV has these one-hot columns with exactly one set, else None."""
    if not all(c in table.columns for c in class_columns):
        return None
    values = table[list(class_columns)].apply(pd.to_numeric, errors="coerce").eq(1).to_numpy()
    if (values.sum(axis=1) != 1).any():
        bad = int(np.flatnonzero(values.sum(axis=1) != 1)[0])
        print(f"{source}: {row_name(table, bad, id_column)} has not exactly one of {', '.join(class_columns)}: "
              "no class-aware precision")
        return None
    return values.argmax(axis=1)


@torch.no_grad()
def evaluate_retrieval(model, csv_path: str, data_root: Optional[str] = None, *, image_column: Optional[str] = None,
                       text_column: Optional[str] = None, batch_size: int = 64, num_workers: int = 0, device=None,
                       precision: str = "fp32", progress: bool = True, image_cache: Optional[str] = None,
                       image_cache_rebuild: bool = False) -> RetrievalResult:
    """Embed every image and its report with `model` and score retrieval both ways (module docstring);
    `image_cache` as in zero_shot.evaluate."""
    table = read_table(csv_path, (), dtype=str)
    image_column, text_column = retrieval_columns(list(table.columns), image_column, text_column, csv_path)
    if table.empty:
        raise UserInputError(f"{csv_path}: no rows to evaluate")
    empty = table[text_column].isna() | (table[text_column].astype(str).str.strip() == "")
    if empty.any():
        raise UserInputError(f"{csv_path}: {row_name(table, int(np.flatnonzero(empty.to_numpy())[0]), image_column)}: "
                             f"empty {text_column}")
    root = data_root_for(csv_path, data_root)
    paths = [resolve_path(p, root) for p in table[image_column]]
    device = next(model.parameters()).device if device is None else resolve_device(str(device))
    model.to(device)
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    try:
        pixels = image_source(paths, model.eval_pixels, cache=image_cache, rebuild=image_cache_rebuild, csv=csv_path,
                              num_workers=num_workers, skip_unreadable=None, progress=progress)
        loader = DataLoader(ImageListDataset(pixels), batch_size=batch_size, num_workers=num_workers,
                            pin_memory=device.type == "cuda", collate_fn=collate_eval_items)
        images: List[torch.Tensor] = []
        for _, batch, unreadable in tqdm(loader, desc="retrieval images", unit="batch", disable=not progress):
            if unreadable:
                raise UserInputError(unreadable[0][1])
            with autocast(device, precision):
                images.append(model.encode_image(batch.to(device, non_blocking=True)).float().cpu())
        texts = table[text_column].astype(str).tolist()
        text_emb = []
        for start in range(0, len(texts), batch_size):
            with autocast(device, precision):
                text_emb.append(model.encode_text(model.tokenize(texts[start:start + batch_size]).to(device))
                                .float().cpu())
    finally:
        model.train(was_training)
    result = retrieval_metrics(torch.cat(images).numpy(), torch.cat(text_emb).numpy(), texts,
                               one_class_per_row(table, csv_path, id_column=image_column),
                               table[image_column].tolist())
    result.metrics.update({"csv": os.path.abspath(csv_path), "image_column": image_column,
                           "text_column": text_column})
    return result
