"""Image-report pairs for training: the Dataset, its collate function, and the resumable sampler/loader.

Decisions:
- Images go through ace_lora.data.transforms' `train` transform: the whole image resized to the model's
  square input (bicubic), as in the released training. Items and batches carry uint8 pixels (one channel
  for greyscale images); the model normalises them on its device with its own mean/std. With an image
  cache (data/image_cache.py) the pixels are read from it instead of decoded, bit for bit the same.
- Missing images and empty reports are found up front (one os.path.isfile per row, before training starts): the run
  stops with the number missing and the first few names, instead of failing hours later. A file that
  exists but cannot be decoded fails when it is first read, with load_image's message naming it.
- Reports are tokenized in the collate function, i.e. in the DataLoader workers. open_clip's
  HFTokenizer pickles (tested), so this also works with the spawn/forkserver start methods.
- Uncertain CheXpert labels (-1) become 0 or 1 (`--uncertain-policy`, the one place that maps them);
  empty labels become 0, as in the released method; any other value (e.g. "yes") is an error naming
  the row.
- Order: a DistributedSampler (one replica outside DDP) reshuffled per epoch by `set_epoch`, no padding,
  incomplete last batch dropped. A resumed epoch skips the batches already trained on by skipping their
  indices in the sampler: the skipped images are never loaded. One DataLoader serves the whole run, so
  its workers persist across epochs.
"""
import os
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ace_lora.data.image_cache import image_source
from ace_lora.data.labels import CHEXPERT_LABELS, UNCERTAIN_POLICIES
from ace_lora.data.mimic import read_training_csv
from ace_lora.data.tables import row_number
from ace_lora.data.transforms import pixel_transform, stack_pixels
from ace_lora.errors import UserInputError

MAX_LISTED = 3  # missing files / empty reports named in the error


def training_table(csv_path: str, data_root: Optional[str] = None, label_csv: Optional[str] = None,
                   split: Optional[str] = "train", quiet: bool = False) -> pd.DataFrame:
    """The rows of the training CSV to train on (only `split` if the CSV has a `split` column).

    The index is kept as the row's position in the CSV (line = index + 2), for error messages.
    """
    table = read_training_csv(csv_path, data_root=data_root, label_csv=label_csv, quiet=quiet)
    if table.empty:
        raise UserInputError(f"{csv_path}: no training rows (the file has a header only)")
    if split and "split" in table.columns:
        available = sorted(table["split"].astype(str).unique())
        table = table[table["split"].astype(str) == split]
        if table.empty:
            raise UserInputError(f"{csv_path}: no rows with split == {split!r} "
                                 f"(splits present: {', '.join(available)})")
    if table.empty:
        raise UserInputError(f"{csv_path}: no training rows")
    return table


def _csv_row(table: pd.DataFrame, position: int) -> int:
    """The "row N" (ace_lora.data.tables) in the CSV file of the table's row at `position`: the index
    is the row's position in the file, also after the split filter."""
    return row_number(table.index[position])


def label_matrix(table: pd.DataFrame, uncertain_policy: str = "zeros", source: str = "training CSV") -> np.ndarray:
    """(N, 14) float32 targets in CHEXPERT_LABELS order: 1 positive, 0 negative/empty, -1 -> policy.

    Blank cells are empty labels; any other value that is not 1, 0 or -1 (a number or text such as
    "yes") is an error naming the `source` row.
    """
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise UserInputError(f"--uncertain-policy must be one of {', '.join(UNCERTAIN_POLICIES)}")
    cells = table[list(CHEXPERT_LABELS)]
    parsed = cells.apply(pd.to_numeric, errors="coerce")  # (N, 14); unparsable -> NaN
    blank = cells.isna() | cells.apply(lambda column: column.astype(str).str.strip() == "")
    bad = ~(parsed.isin([1, 0, -1]) | blank).to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserInputError(f"{source}: column '{CHEXPERT_LABELS[col]}' row {_csv_row(table, row)}: "
                             f"{str(cells.iloc[row, col])!r}, expected 1, 0, -1 or empty")
    values = np.array(parsed.fillna(0.0), np.float32)
    values[values == -1] = 1.0 if uncertain_policy == "ones" else 0.0
    return values


def check_reports_present(table: pd.DataFrame, csv_path: str) -> None:
    """An empty report is a data error: training on it would pair the image with no text."""
    empty = (table["report"].isna() | (table["report"].astype(str).str.strip() == "")).to_numpy()
    if empty.any():
        rows = np.flatnonzero(empty)
        listed = ", ".join(str(_csv_row(table, row)) for row in rows[:MAX_LISTED])
        raise UserInputError(f"{csv_path}: {len(rows)} of {len(table)} training rows have an empty report "
                             f"(row(s) {listed}{', ...' if len(rows) > MAX_LISTED else ''})")


def check_images_exist(table: pd.DataFrame, paths: Sequence[str], csv_path: str) -> None:
    """Every image exists; else one line with the count and the first rows and paths that are missing (or
    that name a folder)."""
    missing = [position for position, p in enumerate(paths) if not os.path.isfile(p)]
    folders = [position for position in missing if os.path.isdir(paths[position])]
    if folders:
        listed = ", ".join(f"row {_csv_row(table, position)} {paths[position]}" for position in folders[:MAX_LISTED])
        raise UserInputError(f"{csv_path}: {len(folders)} image path(s) name a folder, not an image file: {listed}"
                             f"{', ...' if len(folders) > MAX_LISTED else ''}")
    if missing:
        listed = ", ".join(f"row {_csv_row(table, position)} {paths[position]}" for position in missing[:MAX_LISTED])
        raise UserInputError(f"{csv_path}: {len(missing)} of {len(paths)} images not found: {listed}"
                             f"{', ...' if len(missing) > MAX_LISTED else ''} (check --data-root)")


class ImageReportDataset(Dataset):
    """Item i: (uint8 pixels of image i (C, S, S), report i, labels i (14,)); `images` is an image source
    (data/image_cache.py: decoded files or the cache), `image_paths` its files."""

    def __init__(self, image_paths: Sequence[str], reports: Sequence[str], labels: np.ndarray, images: Sequence,
                 rows: Optional[Sequence[str]] = None):
        self.image_paths = list(image_paths)
        self.reports = [str(r) for r in reports]
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.images = images
        self.rows = rows  # where item i comes from ("train.csv row 12"), for messages

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int):
        try:
            pixels = self.images[index]
        except UserInputError as error:
            raise UserInputError(f"{self.rows[index]}: {error}" if self.rows else str(error)) from None
        return pixels, self.reports[index], self.labels[index]


class TokenizingCollate:
    """Batch items into (uint8 pixels (B, 1 or 3, S, S), token ids (B, L), labels (B, 14)); picklable for
    workers."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, items):
        images, reports, labels = zip(*items)
        return stack_pixels(images), self.tokenizer(list(reports)), torch.stack(labels)


def build_training_dataset(csv_path: str, eval_preprocess: Callable, data_root: Optional[str] = None,
                           label_csv: Optional[str] = None, split: Optional[str] = "train",
                           uncertain_policy: str = "zeros", quiet: bool = False, fast_decode: bool = False,
                           image_cache: Optional[str] = None, image_cache_rebuild: bool = False,
                           **cache_options) -> ImageReportDataset:
    """The training pairs; images go through the `train` pixel transform of the model whose evaluation
    transform is `eval_preprocess` (its size), decoded from the files or read from `image_cache` (built
    first where there is none: `cache_options` go to image_cache.open_or_build). `quiet`: print nothing
    (DDP ranks > 0)."""
    table = training_table(csv_path, data_root, label_csv, split, quiet=quiet)
    labels = label_matrix(table, uncertain_policy, source=csv_path)
    check_reports_present(table, csv_path)
    paths = table["image_path"].astype(str).tolist()
    check_images_exist(table, paths, csv_path)
    images = image_source(paths, pixel_transform(eval_preprocess, "train"), fast_decode, image_cache,
                          image_cache_rebuild, csv=csv_path, **cache_options)
    rows = [f"{csv_path} row {_csv_row(table, position)}" for position in range(len(table))]
    return ImageReportDataset(paths, table["report"].tolist(), labels, images, rows)


class EpochSampler(Sampler):
    """This rank's indices of one epoch, in the DistributedSampler order of (seed, epoch), after the first
    `skip` (a resumed epoch's batches already trained on: never loaded). `set_epoch` between epochs lets one
    DataLoader, and its persistent workers, serve every epoch."""

    def __init__(self, dataset: Dataset, *, seed: int, rank: int, world_size: int):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def steps_per_epoch(n_items: int, batch_size: int, world_size: int) -> int:
    """Full batches per rank and epoch (DistributedSampler without padding, last partial batch dropped)."""
    return (n_items // world_size) // batch_size


class TrainingLoader:
    """One DataLoader for the whole run: its order depends only on (seed, epoch), never on the global RNG.

    Batches leave the workers as uint8 (normalised on the device), pinned on CUDA; the workers persist
    across epochs and keep PREFETCH batches each in flight. The workers draw no random numbers (the
    transforms are deterministic), so their seeds do not affect training.
    """
    PREFETCH = 4

    def __init__(self, dataset: Dataset, collate: Callable, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, pin_memory: bool = False):
        self.sampler = EpochSampler(dataset, seed=seed, rank=rank, world_size=world_size)
        generator = torch.Generator().manual_seed(seed * 100_003 + rank)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, collate_fn=collate,
                                 num_workers=num_workers, pin_memory=pin_memory, drop_last=True, generator=generator,
                                 persistent_workers=num_workers > 0,
                                 prefetch_factor=self.PREFETCH if num_workers > 0 else None)

    def epoch(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        """The loader, set to `epoch` with its first `skip_batches` batches left out."""
        self.sampler.set_epoch(epoch, skip_batches * self.loader.batch_size)
        return self.loader


def one_line_error(error: UserInputError) -> UserInputError:
    """A UserInputError re-raised from a DataLoader worker carries the worker's traceback: keep its message."""
    message = str(error)
    if "Traceback" in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split("UserInputError: ", 1)[-1]
    return UserInputError(message)


def iterate_batches(loader: DataLoader) -> Iterator:
    """Iterate `loader`, turning worker-side UserInputErrors into one-line ones."""
    try:
        yield from loader
    except UserInputError as error:
        raise one_line_error(error) from None

