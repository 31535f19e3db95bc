"""The image cache: the uint8 pixels of a deterministic transform (data/transforms.py), computed once and then
read back at memory speed, by any number of DDP ranks and nodes on a shared file system.

Both transforms of this project are deterministic (whole-image resize for training, as released, without
augmentation; resize + centre crop for evaluation), so the cached pixels are exactly what decoding would
give: training and zero-shot results from the cache equal those from the image files bit for bit.

A cache folder holds:
- `plan.json`, written first: the transform (`PixelTransform.describe()` and the decode), the source images
  in order (unique resolved paths, in CSV order), the CSV they came from and the chunk size.
- `chunks/NNNNNN.npy` and `chunks/NNNNNN.json`: chunk N's images as one flat uint8 array, and per image its
  source (path, size, mtime_ns, optionally a blake2b content hash), channels (1 greyscale, 3 colour, 0
  unreadable, with the error) and offset. Both are written atomically, the .json last: a chunk without
  its .json is not done, so a killed build continues where it stopped when run again.
- `chunks/NNNNNN.sum.json`: the chunk file's size and blake2b checksum, taken when it was written (before its
  .json).
- `index.csv`, then `manifest.json` (with every chunk's size and checksum), written when every chunk is
  done: only a folder with a manifest is read as a cache, so a half-built one is never used as a whole one.

Decisions:
- numpy `.npy` chunks opened with `mmap_mode="r"`: no new dependency, reads straight from the page cache,
  read-only opening (nothing is written while training). One file per chunk rather than one multi-GB file,
  so the build commits chunk by chunk and a rebuild rewrites only the chunks whose sources changed.
- Opening checks (UserInputError, one line): the transform (another size, crop, interpolation, Pillow
  version or decode is refused with both values); that every image asked for is in the cache; and that no
  source changed since it was cached (size and mtime; a cache with content hashes accepts a changed mtime
  when the content is equal, e.g. a data set copied to another cluster). Changed and deleted sources are
  named; `rebuild` rebuilds the chunks that hold them.
- Damage (a truncated, deleted or replaced chunk, a deleted or truncated index.csv, an unreadable manifest
  or plan) is checked cheaply at every opening (the files exist and have their recorded sizes; the index
  has every row) and ends in one line naming the damage and the command that repairs it: a build with
  rebuild (`--image-cache-rebuild`, `cache_images.py --rebuild`) rewrites exactly the damaged chunks (it
  compares every chunk's checksum) and the index and manifest. Bytes corrupted at the same size are found
  by the checksums: `cache_images.py --verify DIR` checks every chunk and names the damaged ones.
- The builder locks the folder (folder_lock.FolderLock): a second builder is refused while the first lives; it
  removes the temporary files that a killed build left.
- Cached lookups are by path, so a cache of the whole training CSV serves any split of it.
"""
import hashlib
import os
import shutil
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ace_lora.data.images import load_image
from ace_lora.data.paths import data_root_for, resolve_path
from ace_lora.data.tables import read_table
from ace_lora.data.transforms import PixelTransform
from ace_lora.errors import UserInputError
from ace_lora.folder_lock import LOCK_NAME, FolderLock
from ace_lora.io import atomic_write, read_json, write_json

CACHE_FORMAT = 1
PLAN, MANIFEST, INDEX, CHUNKS = "plan.json", "manifest.json", "index.csv", "chunks"
DEFAULT_CHUNK_SIZE = 256
MAX_LISTED = 3
_HASH_BLOCK = 1 << 20


# ---- images from files -----------------------------------------------------------------------------------
class DecodedImages:
    """The pixels of image files, decoded at each access: item i = transform(load_image(paths[i])) as uint8
    (C, S, S). With `fast_decode`, JPEGs are decoded at the smallest DCT scale of at least twice S."""

    def __init__(self, paths: Sequence[str], transform: PixelTransform, fast_decode: bool = False):
        self.paths, self.transform, self.fast_decode = list(paths), transform, fast_decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        draft = 2 * self.transform.size if self.fast_decode else None
        return self.transform(load_image(self.paths[index], keep_greyscale=True, draft_size=draft))


def image_source(paths: Sequence[str], transform: PixelTransform, fast_decode: bool = False,
                 cache: Optional[str] = None, rebuild: bool = False, **build_options):
    """The pixels of `paths` (item i: uint8 (C, S, S)): decoded from the files, or read from the cache folder
    `cache` (built first where there is none, see `open_or_build`)."""
    if cache is None:
        return DecodedImages(paths, transform, fast_decode)
    return open_or_build(cache, paths, transform, fast_decode=fast_decode, rebuild=rebuild, **build_options)


def csv_image_paths(csv: str, data_root: Optional[str] = None, task=None) -> List[str]:
    """The image files a CSV lists: a training CSV's `image_path` column, or a zero-shot data set's
    (`task`, an evaluation.tasks.ZeroShotTask: its image column and path rules); relative paths start at
    `data_root` (default: the CSV's folder). An image that a task cannot find is an error naming it."""
    root = data_root_for(csv, data_root)
    if not os.path.isdir(root):
        raise UserInputError(f"data root not found: {root}")
    if task is None:
        table = read_table(csv, ["image_path"], dtype={"image_path": str})
        return [resolve_path(p, root) for p in table["image_path"] if not pd.isna(p)]
    table = read_table(csv, task.required_columns, dtype={task.id_column: str, task.image_column: str})
    paths = task.image_paths(table, root)
    missing = [str(table[task.id_column].iloc[row]) for row, path in enumerate(paths) if path is None]
    if missing:
        raise UserInputError(f"{csv}: no image file for {len(missing)} row(s) under {root}, first: {missing[0]}")
    return paths


def describe(transform: PixelTransform, fast_decode: bool) -> dict:
    return {**transform.describe(), "fast_decode": bool(fast_decode)}


def _file_hash(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: str) -> Optional[dict]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _json_or_damage(path: str):
    """(document or None when absent, None) or (None, what is wrong) for a file that is not readable JSON."""
    try:
        return read_json(path), None
    except (ValueError, UnicodeDecodeError):
        return None, f"{os.path.basename(path)} is not readable JSON"


def repair_hint(folder: str, flag: str = "--image-cache") -> str:
    if flag == "--output":
        return "repair it with the same dataset_prep/cache_images.py command and --rebuild"
    return (f"repair it with --image-cache-rebuild (or dataset_prep/cache_images.py --csv CSV --output {folder} "
            "--rebuild)")


class CacheDamaged(UserInputError):
    """A cache whose files do not match their records; the message names the damage and the repair."""

    def __init__(self, folder: str, what: str, flag: str = "--image-cache"):
        super().__init__(f"{flag} {folder} is damaged ({what}): {repair_hint(folder, flag)}")


def _chunk_sum_path(folder: str, chunk: int) -> str:
    return os.path.join(folder, CHUNKS, f"{chunk:06d}.sum.json")


def _chunk_damage(folder: str, chunk: int, expected_bytes: int, record: Optional[dict] = None,
                  checksum: bool = False) -> Optional[str]:
    """What is wrong with chunk `chunk`'s pixel file, None if nothing: missing, not a .npy file, another length
    than its `expected_bytes` of pixels or its recorded size, or (`checksum`) another checksum."""
    path = _chunk_paths(folder, chunk)[0]
    name = os.path.relpath(path, folder)
    if not os.path.isfile(path):
        return f"{name} is missing"
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(f)
            header = f.tell()
    except (ValueError, OSError, EOFError):
        return f"{name} is not a pixel chunk (unreadable header, {size} bytes)"
    if shape != (expected_bytes,) or size != header + expected_bytes:
        return f"{name} is truncated or overwritten ({size} bytes, expected {header + expected_bytes})"
    if record is not None and record.get("bytes") != size:
        return f"{name} has {size} bytes, {record.get('bytes')} when it was written"
    if checksum and record is not None and _file_hash(path) != record.get("blake2b"):
        return f"{name} has other bytes than when it was written (checksum differs)"
    return None


# ---- building ----------------------------------------------------------------------------------------------
class _ChunkItems(Dataset):
    """Item i: (source stat, pixels or None, error or None); the stat is taken before decoding, so a file
    changed while it is read counts as changed next time."""

    def __init__(self, images: DecodedImages, content_hash: bool):
        self.images, self.content_hash = images, content_hash

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        path = self.images.paths[index]
        stat = {"path": path, **(_stat(path) or {"size": -1, "mtime_ns": -1})}
        try:
            if self.content_hash:
                stat["blake2b"] = _file_hash(path)
            return stat, self.images[index], None
        except (UserInputError, OSError) as err:  # load_image's one line names the file
            return stat, None, str(err)


def _chunk_paths(folder: str, chunk: int):
    base = os.path.join(folder, CHUNKS, f"{chunk:06d}")
    return base + ".npy", base + ".json"


def _chunk_is_current(folder: str, chunk: int, sources: Sequence[str], size: int, checksum: bool = False) -> bool:
    """Chunk `chunk` is written, for these sources, which have not changed since, and its pixel file is whole
    (its length; with `checksum`, its bytes)."""
    entries, damaged = _json_or_damage(_chunk_paths(folder, chunk)[1])
    if damaged or not entries or [e["path"] for e in entries] != list(sources):
        return False
    record, _ = _json_or_damage(_chunk_sum_path(folder, chunk))
    expected = sum(int(e["channels"]) for e in entries) * size * size
    if _chunk_damage(folder, chunk, expected, record, checksum) is not None:
        return False
    return not _changed_sources(entries)


def _changed_sources(entries: Sequence[dict]) -> List[str]:
    """The entries whose source differs from its record: "path (what changed)"."""
    changed = []
    for entry in entries:
        stat = _stat(entry["path"])
        if stat is None and entry["size"] == -1:
            continue  # missing when it was cached (--skip-unreadable) and still missing: reading it names it
        if stat is None:
            changed.append(f"{entry['path']} (deleted)")
        elif (stat["size"], stat["mtime_ns"]) != (entry["size"], entry["mtime_ns"]):
            if entry.get("blake2b") and stat["size"] == entry["size"] and _file_hash(entry["path"]) == entry["blake2b"]:
                continue  # same content, new mtime (a copied data set)
            what = (f"size {entry['size']} -> {stat['size']}" if stat["size"] != entry["size"]
                    else "modified since caching")
            changed.append(f"{entry['path']} ({what})")
    return changed


def _write_chunk(folder: str, chunk: int, items, skip_unreadable: Optional[bool], csv: str) -> int:
    """Write one chunk (pixels, then its entries); returns the number of unreadable images. `skip_unreadable`
    None: the caller has no such option (training), so an unreadable image is an error without the hint."""
    entries, arrays, offset, unreadable = [], [], 0, 0
    for stat, pixels, error in items:
        if error is not None and not skip_unreadable:
            hint = "; pass --skip-unreadable to cache the others and flag it" if skip_unreadable is False else ""
            raise UserInputError(f"{error} (in {csv or 'the image list'}{hint})")
        entry = dict(stat, offset=offset, channels=0 if pixels is None else int(pixels.shape[0]))
        if pixels is None:
            entry["error"], unreadable = error, unreadable + 1
        else:
            flat = pixels.numpy().reshape(-1)
            arrays.append(flat)
            offset += flat.size
        entries.append(entry)
    pixels_path, entries_path = _chunk_paths(folder, chunk)
    data = np.concatenate(arrays) if arrays else np.zeros(0, np.uint8)
    atomic_write(pixels_path, lambda f: np.save(f, data, allow_pickle=False))
    write_json(_chunk_sum_path(folder, chunk), {"bytes": os.path.getsize(pixels_path),
                                                "blake2b": _file_hash(pixels_path)})
    write_json(entries_path, entries, indent=None)
    return unreadable


def _unique(paths: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def build_cache(folder: str, paths: Sequence[str], transform: PixelTransform, *, fast_decode: bool = False,
                csv: str = "", chunk_size: int = DEFAULT_CHUNK_SIZE, num_workers: int = 0, content_hash: bool = False,
                skip_unreadable: Optional[bool] = False, rebuild: bool = False, progress: bool = True,
                flag: str = "--output") -> dict:
    """Build the cache of `paths` in `folder`, continue a half-built one, repair a damaged one, or (`rebuild`)
    rebuild the chunks whose sources changed or whose bytes differ from their checksums (and a cache of other
    images or another transform as a whole). Decoding runs in `num_workers` DataLoader workers, this process
    writes. `flag` names the folder's option in messages. Returns the manifest."""
    check_cache_folder(folder, flag)
    if chunk_size < 1 or num_workers < 0:
        raise UserInputError(f"--chunk-size must be >= 1 and --num-workers >= 0 (got {chunk_size}, {num_workers})")
    sources = _unique(paths)
    if not sources:
        raise UserInputError("no images to cache")
    os.makedirs(folder, exist_ok=True)
    with FolderLock(folder, owner="image cache build", flag=flag):
        _remove_temporary_files(folder)
        plan = {"format": CACHE_FORMAT, "transform": describe(transform, fast_decode), "csv": os.path.abspath(csv)
                if csv else "", "chunk_size": chunk_size, "content_hash": content_hash, "sources": sources}
        old, damaged = _json_or_damage(os.path.join(folder, PLAN))
        if damaged and not rebuild:
            raise CacheDamaged(folder, damaged, flag)
        chunks_dir = os.path.join(folder, CHUNKS)
        foreign = sorted(set(os.listdir(folder)) - {CHUNKS, LOCK_NAME, *([PLAN, MANIFEST, INDEX] if damaged else [])})
        if old is None and (foreign or (os.path.isdir(chunks_dir) and os.listdir(chunks_dir))) and not damaged:
            raise UserInputError(f"{folder} holds other files ({', '.join(foreign[:3]) or 'chunks without a plan'}) "
                                 "and no image cache: give an empty or new folder")
        if old is not None:
            differs = [key for key in ("format", "transform", "sources", "chunk_size", "content_hash")
                       if old.get(key) != plan[key]]
            if differs and not rebuild:
                raise UserInputError(f"{folder} holds an image cache with other {', '.join(differs)} ("
                                     f"{_difference(old, plan, differs[0])}): choose another folder, or rebuild it "
                                     "(--rebuild; --image-cache-rebuild of the training and evaluation scripts)")
            if differs:
                _remove(folder, MANIFEST, INDEX, CHUNKS)
        os.makedirs(chunks_dir, exist_ok=True)
        write_json(os.path.join(folder, PLAN), plan)
        chunks = [sources[start:start + chunk_size] for start in range(0, len(sources), chunk_size)]
        todo = [c for c, chunk in enumerate(chunks)
                if not _chunk_is_current(folder, c, chunk, transform.size, checksum=rebuild)]
        if todo:
            _remove(folder, MANIFEST)  # not whole while any chunk is written
            items = _ChunkItems(DecodedImages(sources, transform, fast_decode), content_hash)
            batches = [range(c * chunk_size, c * chunk_size + len(chunks[c])) for c in todo]
            # its own generator: a loader without one draws its workers' seed from the global RNG, and a run that
            # builds its cache must train as one that finds it built
            loader = DataLoader(items, batch_sampler=batches, num_workers=num_workers, collate_fn=list,
                                prefetch_factor=2 if num_workers else None, generator=torch.Generator())
            with tqdm(total=len(sources), initial=len(sources) - sum(len(chunks[c]) for c in todo), unit="img",
                      desc=f"caching images in {folder}", disable=not progress) as bar:  # closed before any error
                for c, batch in zip(todo, loader):
                    _write_chunk(folder, c, batch, skip_unreadable, csv)
                    bar.update(len(batch))
        return _finalise(folder, plan, len(chunks))


def _remove_temporary_files(folder: str) -> None:
    """The .tmp_ files of atomic writes that a killed build left (the caller holds the folder's lock)."""
    for parent in (folder, os.path.join(folder, CHUNKS)):
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                if name.startswith(".tmp_"):
                    os.remove(os.path.join(parent, name))


def verify_cache(folder: str) -> Tuple[int, List[str]]:
    """(chunks checked, the damaged ones): every chunk's size and, where recorded, checksum."""
    manifest, damaged = _json_or_damage(os.path.join(folder, MANIFEST))
    if damaged or manifest is None:
        plan, _ = _json_or_damage(os.path.join(folder, PLAN))
        if manifest is None and plan is None and not damaged:
            raise UserInputError(f"--verify {folder} is not an image cache (no {MANIFEST})")
        raise CacheDamaged(folder, damaged or f"{MANIFEST} is missing", "--verify")
    index = _read_index(folder, manifest, "--verify")
    size = manifest["transform"]["size"]
    records = manifest.get("chunks") or []
    problems = []
    n_chunks = int(index["chunk"].max()) + 1 if len(index) else 0
    expected = index.groupby("chunk")["channels"].sum()
    for chunk in range(n_chunks):
        record = records[chunk] if chunk < len(records) else None
        problem = _chunk_damage(folder, chunk, int(expected.get(chunk, 0)) * size * size, record, checksum=True)
        if problem:
            problems.append(problem)
    return n_chunks, problems


def _difference(old: dict, new: dict, key: str) -> str:
    if key == "sources":
        return f"{len(old['sources'])} images from {old.get('csv') or 'a list'}, now {len(new['sources'])} from " \
               f"{new.get('csv') or 'a list'}"
    if key == "transform":
        keys = [k for k in new["transform"] if old["transform"].get(k) != new["transform"][k]]
        return "; ".join(f"{k} {old['transform'].get(k)} vs {new['transform'][k]}" for k in keys)
    return f"{key} {old.get(key)} vs {new[key]}"


def _remove(folder: str, *names: str) -> None:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _finalise(folder: str, plan: dict, n_chunks: int) -> dict:
    """index.csv (every entry with its chunk), then manifest.json: from now on the folder is a cache."""
    frames = []
    for c in range(n_chunks):
        frame = pd.DataFrame(read_json(_chunk_paths(folder, c)[1]))
        frame["chunk"] = c
        frames.append(frame)
    index = pd.concat(frames, ignore_index=True)
    if "error" not in index:
        index["error"] = ""
    atomic_write(os.path.join(folder, INDEX), lambda f: f.write(index.to_csv(index=False).encode("utf-8")))
    size = plan["transform"]["size"]
    manifest = {key: plan[key] for key in ("format", "transform", "csv", "chunk_size", "content_hash")}
    manifest.update(n_images=len(index), n_unreadable=int((index["channels"] == 0).sum()),
                    n_greyscale=int((index["channels"] == 1).sum()), bytes=int(index["channels"].sum()) * size * size,
                    chunks=[read_json(_chunk_sum_path(folder, c)) for c in range(n_chunks)])
    write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


# ---- reading -----------------------------------------------------------------------------------------------
def check_cache_folder(folder: str, flag: str = "--image-cache") -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserInputError(f"{flag} {folder} is a file, not a folder")


class CachedImages:
    """Pixels read from a cache: item i = uint8 (C, S, S) of the i-th path asked for; an image that was
    unreadable when cached raises its UserInputError. Picklable: each DataLoader worker maps the chunk
    files itself (a memory map is never copied through a pickle). At most OPEN_MAPS chunk maps stay open
    per process (each holds a file descriptor; a MIMIC cache has up to ~1,500 chunks)."""

    OPEN_MAPS = 64

    def __init__(self, folder: str, size: int, rows: pd.DataFrame):
        self.folder, self.size = folder, size
        self.paths = rows["path"].tolist()
        self.chunks = rows["chunk"].to_numpy(np.int64)
        self.offsets = rows["offset"].to_numpy(np.int64)
        self.channels = rows["channels"].to_numpy(np.int64)
        self.errors = rows["error"].fillna("").astype(str).tolist()
        self._maps: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self):
        return {**self.__dict__, "_maps": OrderedDict()}

    def _chunk(self, chunk: int) -> np.ndarray:
        if chunk in self._maps:
            self._maps.move_to_end(chunk)
        else:
            if len(self._maps) >= self.OPEN_MAPS:
                self._maps.popitem(last=False)  # the least recently used map; its file closes with it
            self._maps[chunk] = np.load(_chunk_paths(self.folder, chunk)[0], mmap_mode="r", allow_pickle=False)
        return self._maps[chunk]

    def __getitem__(self, index: int) -> torch.Tensor:
        channels = int(self.channels[index])
        if channels == 0:
            raise UserInputError(self.errors[index] or f"cannot read image {self.paths[index]}")
        n = channels * self.size * self.size
        start = int(self.offsets[index])
        values = np.array(self._chunk(int(self.chunks[index]))[start:start + n])  # a copy, off the map
        return torch.from_numpy(values).view(channels, self.size, self.size)


def _read_index(folder: str, manifest: dict, flag: str = "--image-cache") -> pd.DataFrame:
    """index.csv, checked against the manifest (a missing, unreadable or truncated index is damage)."""
    path = os.path.join(folder, INDEX)
    if not os.path.isfile(path):
        raise CacheDamaged(folder, f"{INDEX} is missing", flag)
    try:
        index = pd.read_csv(path, dtype={"path": str, "error": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        raise CacheDamaged(folder, f"{INDEX} is not a readable CSV", flag) from None
    columns = {"path", "chunk", "offset", "channels", "size", "mtime_ns"}
    if not columns <= set(index.columns) or len(index) != manifest.get("n_images"):
        raise CacheDamaged(folder, f"{INDEX} has {len(index)} of the {manifest.get('n_images')} images of "
                                   f"{MANIFEST}", flag)
    return index


def open_cache(folder: str, paths: Sequence[str], transform: PixelTransform, fast_decode: bool = False) -> CachedImages:
    """The cached pixels of `paths` (in that order), after the checks of the module docstring."""
    check_cache_folder(folder)
    manifest, damaged = _json_or_damage(os.path.join(folder, MANIFEST))
    if damaged:
        raise CacheDamaged(folder, damaged)
    if manifest is None:
        plan, damaged = _json_or_damage(os.path.join(folder, PLAN))
        if damaged:
            raise CacheDamaged(folder, damaged)
        if plan is None:
            raise UserInputError(f"--image-cache {folder} is not an image cache (no {MANIFEST})")
        raise UserInputError(f"--image-cache {folder} is half built: finish it by running the same "
                             "dataset_prep/cache_images.py (or train.py) command again")
    expected = describe(transform, fast_decode)
    if manifest.get("format") != CACHE_FORMAT:
        raise UserInputError(f"--image-cache {folder} has format {manifest.get('format')}, this version reads "
                             f"{CACHE_FORMAT}: rebuild it with --image-cache-rebuild")
    if manifest["transform"] != expected:
        differs = _difference({"transform": manifest["transform"]}, {"transform": expected}, "transform")
        raise UserInputError(f"--image-cache {folder} was built for another transform ({differs}, cache vs this "
                             "run): use another folder, or rebuild it with --image-cache-rebuild")
    index = _read_index(folder, manifest)
    position = pd.Series(np.arange(len(index)), index=index["path"])
    wanted = [os.path.abspath(p) for p in paths]
    absent = [p for p in wanted if p not in position.index]
    if absent:
        raise UserInputError(f"--image-cache {folder}: {len(absent)} of {len(wanted)} images are not in this cache "
                             f"(built from {manifest.get('csv') or 'an image list'}, {manifest['n_images']} images), "
                             f"first: {absent[0]}; cache this CSV in another folder")
    rows = index.iloc[position.loc[wanted].to_numpy()]
    records = manifest.get("chunks") or []
    pixels_per_chunk = index.groupby("chunk")["channels"].sum() * transform.size * transform.size
    for chunk in sorted(set(rows["chunk"].tolist())):  # cheap: a header and a size per chunk used
        problem = _chunk_damage(folder, chunk, int(pixels_per_chunk[chunk]),
                                records[chunk] if chunk < len(records) else None)
        if problem:
            raise CacheDamaged(folder, problem)
    changed = _changed_sources(rows.to_dict("records"))
    if changed:
        raise UserInputError(f"--image-cache {folder}: {len(changed)} source image(s) changed since caching: "
                             f"{', '.join(changed[:MAX_LISTED])}{', ...' if len(changed) > MAX_LISTED else ''}; "
                             "rebuild those entries with --image-cache-rebuild")
    return CachedImages(folder, transform.size, rows)


def open_or_build(folder: str, paths: Sequence[str], transform: PixelTransform, *, fast_decode: bool = False,
                  rebuild: bool = False, csv: str = "", run_on_main=None, **build_options) -> CachedImages:
    """`open_cache`, building the cache first where `folder` does not hold a whole one (the images of a
    half-built plan, else `paths`) or `rebuild` asks (the cache's own images). `run_on_main(work)` runs the
    build once in DDP (rank 0 builds while the other ranks wait; distributed.run_on_main); every rank then
    opens the cache read-only."""
    def build():
        if os.path.isfile(os.path.join(folder, MANIFEST)) and not rebuild:
            return
        plan = _json_or_damage(os.path.join(folder, PLAN))[0] if os.path.isdir(folder) else None
        options = dict(build_options, csv=csv, flag="--image-cache")
        if plan:  # continue or refresh the folder's own plan: its images, chunks and hashing
            options.update(csv=plan["csv"], chunk_size=plan["chunk_size"], content_hash=plan["content_hash"])
        build_cache(folder, plan["sources"] if plan else paths, transform, fast_decode=fast_decode, rebuild=rebuild,
                    **options)

    check_cache_folder(folder)
    (run_on_main or (lambda work: work()))(build)
    return open_cache(folder, paths, transform, fast_decode)
