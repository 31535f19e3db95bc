"""The image cache: exact pixels, resumable chunked build, and every check made when a cache is opened."""
import contextlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ace_lora.data import image_cache as C
from ace_lora.data.eval_dataset import ImageListDataset, collate_eval_items
from ace_lora.data.synthetic import write_dicom
from ace_lora.data.transforms import PixelTransform
from ace_lora.errors import StorageError, UserInputError
from ace_lora.folder_lock import FolderLock

SIZE = 16
TRAIN = PixelTransform("train", SIZE, [T.Resize((SIZE, SIZE), interpolation=T.InterpolationMode.BICUBIC)])
EVAL = PixelTransform("eval", SIZE, [T.Resize(SIZE, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(SIZE)])


@pytest.fixture()
def sources(tmp_path):
    """Seven images: greyscale JPEG and PNG, a colour PNG, a 16-bit PNG and a DICOM."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(4):
        path = folder / f"grey{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40 + i, 30), dtype=np.uint8)).save(path, quality=95)
        paths.append(path)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(0, 4000, (24, 20), dtype=np.uint16)).save(folder / "deep.png")
    write_dicom(folder / "scan.dcm", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    paths += [folder / "colour.png", folder / "deep.png", folder / "scan.dcm"]
    return [str(p) for p in paths]


def pixels_of(images):
    return [images[i] for i in range(len(images))]


def assert_same_pixels(a, b):
    assert len(a) == len(b)
    for x, y in zip(pixels_of(a), pixels_of(b)):
        assert x.dtype == torch.uint8 and torch.equal(x, y)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_pixels_equal_the_decoded_ones(sources, tmp_path, num_workers):
    folder = str(tmp_path / "cache")
    manifest = C.build_cache(folder, sources, TRAIN, chunk_size=3, num_workers=num_workers, progress=False)
    assert manifest["n_images"] == 7 and manifest["n_unreadable"] == 0 and manifest["n_greyscale"] == 6
    assert manifest["bytes"] == (6 + 3) * SIZE * SIZE  # one channel per greyscale image, three for colour
    cached = C.open_cache(folder, sources, TRAIN)
    assert_same_pixels(cached, C.DecodedImages(sources, TRAIN))
    assert cached[4].shape == (3, SIZE, SIZE) and cached[0].shape == (1, SIZE, SIZE)
    reordered = C.open_cache(folder, sources[::-1], TRAIN)  # looked up by path: any subset, any order
    assert torch.equal(reordered[0], cached[6])
    assert sorted(os.listdir(os.path.join(folder, C.CHUNKS))) == [f"00000{i}.{e}" for i in range(3)
                                                                  for e in ("json", "npy", "sum.json")]
    assert [record["bytes"] for record in manifest["chunks"]] == [
        os.path.getsize(os.path.join(folder, C.CHUNKS, f"00000{i}.npy")) for i in range(3)]


def test_a_cache_is_read_in_workers_without_copying_its_maps(sources, tmp_path):
    folder = str(tmp_path / "cache")
    C.build_cache(folder, sources, EVAL, progress=False)
    cached = C.open_cache(folder, sources, EVAL)
    cached[0]  # maps a chunk
    assert cached._maps and not pickle.loads(pickle.dumps(cached))._maps
    batches = list(DataLoader(ImageListDataset(cached), batch_size=4, num_workers=1, collate_fn=collate_eval_items))
    decoded = list(DataLoader(ImageListDataset(C.DecodedImages(sources, EVAL)), batch_size=4,
                              collate_fn=collate_eval_items))
    for (i, x, _), (j, y, _) in zip(batches, decoded):
        assert torch.equal(i, j) and torch.equal(x, y)


def test_a_killed_build_continues_and_a_half_built_cache_is_never_read(sources, tmp_path):
    folder = str(tmp_path / "cache")
    C.build_cache(folder, sources, TRAIN, chunk_size=2, progress=False)
    reference = pixels_of(C.open_cache(folder, sources, TRAIN))
    # as after a kill during chunk 2: no manifest, chunk 2 without its .json
    os.remove(os.path.join(folder, C.MANIFEST))
    os.remove(os.path.join(folder, C.CHUNKS, "000002.json"))
    with pytest.raises(UserInputError, match="is half built: finish it by running the same"):
        C.open_cache(folder, sources, TRAIN)
    kept = os.path.join(folder, C.CHUNKS, "000000.npy")
    before = os.stat(kept).st_mtime_ns
    C.build_cache(folder, sources, TRAIN, chunk_size=2, progress=False)
    assert os.stat(kept).st_mtime_ns == before  # done chunks are not redone
    assert all(torch.equal(x, y) for x, y in zip(pixels_of(C.open_cache(folder, sources, TRAIN)), reference))


def test_another_transform_or_image_list_is_refused_with_both_values(sources, tmp_path):
    folder = str(tmp_path / "cache")
    C.build_cache(folder, sources, TRAIN, progress=False)
    with pytest.raises(UserInputError, match=r"built for another transform \(kind train vs eval; steps .*Resize"):
        C.open_cache(folder, sources, EVAL)
    bigger = PixelTransform("train", 32, [T.Resize((32, 32))])
    with pytest.raises(UserInputError, match=r"size 16 vs 32"):
        C.open_cache(folder, sources, bigger)
    with pytest.raises(UserInputError, match=r"fast_decode False vs True"):
        C.open_cache(folder, sources, TRAIN, fast_decode=True)
    other = str(tmp_path / "other.png")
    Image.new("L", (8, 8)).save(other)
    with pytest.raises(UserInputError, match=r"1 of 8 images are not in this cache \(built from an image list, 7 "
                                             r"images\), first: .*other\.png"):
        C.open_cache(folder, sources + [other], TRAIN)
    with pytest.raises(UserInputError, match=r"holds an image cache with other transform \(size 16 vs 32;.*--rebuild"):
        C.build_cache(folder, sources, bigger, progress=False)
    with pytest.raises(UserInputError, match=r"other sources \(7 images from a list, now 8"):
        C.build_cache(folder, sources + [other], TRAIN, progress=False)
    C.build_cache(folder, sources, bigger, rebuild=True, progress=False)
    assert C.open_cache(folder, sources, bigger)[0].shape == (1, 32, 32)


def test_changed_and_deleted_sources_are_named_and_rebuilt(sources, tmp_path):
    folder = str(tmp_path / "cache")
    C.build_cache(folder, sources, TRAIN, chunk_size=2, progress=False)
    Image.new("L", (50, 50), 255).save(sources[1], quality=95)  # another image under the same name
    st = os.stat(sources[2])
    os.utime(sources[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only
    with pytest.raises(UserInputError, match=r"2 source image\(s\) changed since caching: .*grey1\.jpg \(size "
                                             r"\d+ -> \d+\), .*grey2\.jpg \(modified since caching\); rebuild those "
                                             r"entries with --image-cache-rebuild"):
        C.open_cache(folder, sources, TRAIN)
    untouched = os.path.join(folder, C.CHUNKS, "000003.npy")
    before = os.stat(untouched).st_mtime_ns
    cached = C.open_or_build(folder, sources, TRAIN, rebuild=True, progress=False)
    assert os.stat(untouched).st_mtime_ns == before  # only the chunks with changed sources are rebuilt
    assert_same_pixels(cached, C.DecodedImages(sources, TRAIN))
    os.remove(sources[5])
    with pytest.raises(UserInputError, match=r"1 source image\(s\) changed since caching: .*deep\.png \(deleted\)"):
        C.open_cache(folder, sources, TRAIN)
    assert len(C.open_cache(folder, sources[:5], TRAIN)) == 5  # the rest is still usable


def test_a_content_hash_accepts_a_copied_data_set(sources, tmp_path):
    folder = str(tmp_path / "cache")
    C.build_cache(folder, sources, TRAIN, content_hash=True, progress=False)
    for path in sources:
        os.utime(path, ns=(0, 10**18))  # new mtimes, same content
    assert_same_pixels(C.open_cache(folder, sources, TRAIN), C.DecodedImages(sources, TRAIN))
    with open(sources[0], "r+b") as f:  # same size, new content: the hash tells
        f.seek(300)
        f.write(b"\x00\x01")
    with pytest.raises(UserInputError, match=r"grey0\.jpg \(modified since caching\)"):
        C.open_cache(folder, sources, TRAIN)


def test_unreadable_images_stop_the_build_or_are_flagged(sources, tmp_path):
    bad = str(tmp_path / "images" / "bad.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    listed = sources + [bad]
    folder = str(tmp_path / "cache")
    with pytest.raises(UserInputError, match=r"cannot read image .*bad\.jpg.*pass --skip-unreadable"):
        C.build_cache(folder, listed, TRAIN, csv="train.csv", progress=False)
    assert not os.path.exists(os.path.join(folder, C.MANIFEST))
    manifest = C.build_cache(folder, listed, TRAIN, skip_unreadable=True, progress=False)
    assert manifest["n_unreadable"] == 1
    cached = C.open_cache(folder, listed, TRAIN)
    with pytest.raises(UserInputError, match=r"cannot read image .*bad\.jpg"):
        cached[7]
    _, images, unreadable = collate_eval_items([ImageListDataset(cached)[i] for i in (0, 7)])
    assert len(images) == 1 and unreadable[0][0] == 7 and "bad.jpg" in unreadable[0][1]


def refusal_while_another_builds(folder, sources, call: str) -> str:
    """What `call` (C.build_cache or C.open_or_build on argv) prints in another process while a build holds
    the folder's lock."""
    code = ("import sys\nfrom ace_lora.data import image_cache as C\nfrom tests.data.test_image_cache import TRAIN\n"
            f"try:\n {call}\nexcept Exception as e: print(e)")
    with FolderLock(str(folder), owner="image cache build", flag="--output"):
        return subprocess.run([sys.executable, "-c", code, str(folder), *sources], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout


@contextlib.contextmanager
def tmpfs(folder, options: str):
    """A tmpfs mounted on `folder` (skips the test where mounting is not allowed)."""
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here ({made.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_second_builder_and_a_file_are_refused(sources, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    out = refusal_while_another_builds(folder, sources,
                                       "C.build_cache(sys.argv[1], sys.argv[2:], TRAIN, progress=False)")
    assert "another image cache build (process" in out and "choose another --output" in out
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserInputError, match="--output .*file is a file, not a folder"):
        C.build_cache(str(a_file), sources, TRAIN)
    with pytest.raises(UserInputError, match="--image-cache .*file is a file, not a folder"):
        C.open_cache(str(a_file), sources, TRAIN)
    with pytest.raises(UserInputError, match="is not an image cache"):
        C.open_cache(str(folder), sources, TRAIN)


def test_a_full_disk_leaves_no_cache_in_use(sources, tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    with tmpfs(mount, "size=64k"):
        big = PixelTransform("train", 128, [T.Resize((128, 128))])  # 16 kB per greyscale image, 49 kB in colour
        with pytest.raises(StorageError, match=r"cannot write .*: the device is full"):
            C.build_cache(str(mount / "cache"), sources, big, chunk_size=1, progress=False)
        assert not os.path.exists(mount / "cache" / C.MANIFEST)
        assert not [n for n in os.listdir(mount / "cache" / C.CHUNKS) if n.startswith(".tmp_")]


def test_the_cache_script_builds_what_training_reads(tiny_model_name, tmp_path, capsys):
    from ace_lora.data.synthetic import write_demo_dataset
    from ace_lora.data.train_dataset import build_training_dataset
    from ace_lora.model.factory import build_model
    from tests.conftest import error_exit_line
    from tests.data.test_prepare import load_script
    script = load_script("cache_images.py")
    data = write_demo_dataset(str(tmp_path / "data"), n_train=6, n_test_per_class=1)
    out = tmp_path / "cache"
    argv = ["--csv", data.train_csv, "--model", tiny_model_name, "--transform", "train", "--output", str(out),
            "--num-workers", "0", "--no-progress"]
    assert script.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("train transform at 64x64")
    preprocess = build_model(tiny_model_name).preprocess
    cached = build_training_dataset(data.train_csv, preprocess, image_cache=str(out))
    decoded = build_training_dataset(data.train_csv, preprocess)
    assert isinstance(cached.images, C.CachedImages) and len(cached) == len(decoded) == 6
    assert all(torch.equal(cached[i][0], decoded[i][0]) for i in range(6))
    line = error_exit_line(capsys, script.main, [*argv[:-3], "--transform", "eval", "--no-progress"])
    assert line.startswith(f"error: {out} holds an image cache with other transform (kind train vs eval;")
    (tmp_path / "a_file").write_text("x")
    line = error_exit_line(capsys, script.main, [*argv[:6], "--output", str(tmp_path / "a_file")])
    assert line == f"error: --output {tmp_path / 'a_file'} is a file, not a folder"


def test_few_chunk_maps_stay_open_and_a_missing_image_stays_flagged(sources, tmp_path, monkeypatch):
    folder = str(tmp_path / "cache")
    listed = sources + [str(tmp_path / "images" / "gone.png")]  # listed but absent
    C.build_cache(folder, listed, TRAIN, chunk_size=1, skip_unreadable=True, progress=False)
    cached = C.open_cache(folder, listed, TRAIN)  # absent when cached and still absent: not a change
    monkeypatch.setattr(C.CachedImages, "OPEN_MAPS", 3)
    decoded = C.DecodedImages(sources, TRAIN)
    for i in list(range(7)) * 2:  # eight chunks, three maps at a time
        assert torch.equal(cached[i], decoded[i])
        assert len(cached._maps) <= 3
    with pytest.raises(UserInputError, match=r"image not found: .*gone\.png"):
        cached[7]


def test_a_folder_with_other_files_is_not_taken_for_a_cache(sources, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "index.csv").write_text("my own file\n")
    with pytest.raises(UserInputError, match=r"holds other files \(index\.csv\) and no image cache"):
        C.build_cache(str(folder), sources, TRAIN, progress=False)
    assert (folder / "index.csv").read_text() == "my own file\n"


def _truncate(path, keep):
    with open(path, "r+b") as f:
        f.truncate(keep)


DAMAGES = {  # what is done to a built cache, and the damage the one line names
    "truncated chunk": (lambda out: _truncate(out / C.CHUNKS / "000000.npy", 200),
                        "chunks/000000.npy is truncated or overwritten (200 bytes, expected"),
    "deleted chunk": (lambda out: os.remove(out / C.CHUNKS / "000001.npy"), "chunks/000001.npy is missing"),
    "deleted index": (lambda out: os.remove(out / C.INDEX), "index.csv is missing"),
    "truncated index": (lambda out: (out / C.INDEX).write_text("\n".join(
        (out / C.INDEX).read_text().splitlines()[:4]) + "\n"), "index.csv has 3 of the 6 images of manifest.json"),
    "damaged manifest": (lambda out: (out / C.MANIFEST).write_text('{"format": 1, "tra'),
                         "manifest.json is not readable JSON"),
}


class ScriptCache:
    """dataset_prep/cache_images.py on a small training CSV, and what training reads back from its cache."""

    def __init__(self, model_name: str, root):
        from ace_lora.data.synthetic import write_demo_dataset
        from ace_lora.data.train_dataset import build_training_dataset
        from ace_lora.model.factory import build_model
        from tests.data.test_prepare import load_script
        self.script, self.model_name = load_script("cache_images.py"), model_name
        self.data = write_demo_dataset(str(root), n_train=6, n_test_per_class=1)
        self.preprocess = build_model(model_name).preprocess
        self.read = lambda **cache: build_training_dataset(self.data.train_csv, self.preprocess, quiet=True, **cache)
        self.decoded = [item[0] for item in self.read()]  # the pixels decoded from the files

    def build(self, out) -> list:
        """Build the cache in `out` (two chunks); returns the script's argv."""
        argv = ["--csv", self.data.train_csv, "--model", self.model_name, "--output", str(out), "--chunk-size", "4",
                "--num-workers", "0", "--no-progress"]
        assert self.script.main(argv) == 0
        return argv

    def assert_serves_decoded_pixels(self, out, **options) -> None:
        cached = self.read(image_cache=str(out), **options)
        assert all(torch.equal(cached[i][0], self.decoded[i]) for i in range(6))


@pytest.fixture(scope="module")
def cache_script_setup(tiny_model_name, tmp_path_factory):
    return ScriptCache(tiny_model_name, tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_cache_is_one_line_naming_the_damage_and_the_repair_and_rebuild_repairs_it(
        damage, cache_script_setup, tmp_path, capsys):
    setup = cache_script_setup
    out = tmp_path / "cache"
    argv = setup.build(out)
    damage_files, named = DAMAGES[damage]
    damage_files(out)
    with pytest.raises(UserInputError) as error:  # what train.py --image-cache meets
        setup.read(image_cache=str(out))
    assert str(error.value).startswith(f"--image-cache {out} is damaged ({named}")
    assert str(error.value).endswith(f"repair it with --image-cache-rebuild (or dataset_prep/cache_images.py --csv CSV "
                                     f"--output {out} --rebuild)")
    assert setup.script.main([*argv, "--rebuild"]) == 0
    capsys.readouterr()
    assert setup.script.main(["--verify", str(out)]) == 0
    setup.assert_serves_decoded_pixels(out)


def test_corrupted_bytes_are_found_by_verify_and_rebuilt_alone_as_is_a_damaged_cache_under_training(
        cache_script_setup, tmp_path, capsys):
    setup = cache_script_setup
    out = tmp_path / "cache"
    argv = setup.build(out)
    chunk = out / C.CHUNKS / "000001.npy"
    raw = bytearray(chunk.read_bytes())
    raw[-10:] = bytes(255 - b for b in raw[-10:])  # same size, other bytes: the cheap checks cannot see it
    chunk.write_bytes(bytes(raw))
    untouched = (out / C.CHUNKS / "000000.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert setup.script.main(["--verify", str(out)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "damaged: chunks/000001.npy has other bytes than when it was written (checksum differs)"
    assert printed[1].startswith(f"1 of 2 chunks of {out} are damaged: repair them")
    assert setup.script.main([*argv, "--rebuild"]) == 0
    assert (out / C.CHUNKS / "000000.npy").stat().st_mtime_ns == untouched  # exactly the damaged chunk rebuilt
    assert setup.script.main(["--verify", str(out)]) == 0
    setup.assert_serves_decoded_pixels(out)

    os.remove(out / C.CHUNKS / "000000.npy")  # training's own --image-cache-rebuild repairs too
    setup.assert_serves_decoded_pixels(out, image_cache_rebuild=True)


def test_builds_leave_no_debris_and_name_the_callers_flag(sources, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    with pytest.raises(UserInputError, match="holds other files"):
        C.build_cache(str(folder), sources, TRAIN, progress=False)
    assert sorted(os.listdir(folder)) == ["mine.txt"]  # no empty chunks/ (nor a lock) left by a refused build
    cache = tmp_path / "cache"
    C.build_cache(str(cache), sources, TRAIN, chunk_size=3, progress=False)
    (cache / C.CHUNKS / ".tmp_abc.json").write_text("[")  # what kill -9 of a build with workers leaves
    (cache / ".tmp_def.json").write_text("{")
    C.build_cache(str(cache), sources, TRAIN, chunk_size=3, progress=False)
    assert not [n for n in os.listdir(cache) + os.listdir(cache / C.CHUNKS) if n.startswith(".tmp_")]
    out = refusal_while_another_builds(cache, sources,
                                       "C.open_or_build(sys.argv[1], sys.argv[2:], TRAIN, rebuild=True)")
    assert "choose another --image-cache" in out and "--output" not in out  # what train.py --image-cache meets


def test_a_read_only_cache_folder_that_needs_writing_is_a_storage_failure(sources, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    with tmpfs(folder, "ro,size=64k"):
        with pytest.raises(StorageError, match=r"cannot create the lock file .*\.lock: the file system is read-only"):
            C.open_or_build(str(folder), sources, TRAIN, rebuild=True)


def test_an_unreadable_image_ends_the_progress_bar_before_its_error_line(cache_script_setup, tiny_model_name,
                                                                         tmp_path, capsys):
    from tests.conftest import error_exit_line
    script, data = cache_script_setup.script, cache_script_setup.data
    table = open(data.train_csv).read().splitlines()
    first = table[1].split(",")[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join([table[0], table[1].replace(first, str(broken), 1), *table[2:]]) + "\n")
    argv = ["--csv", str(csv), "--data-root", data.data_root, "--model", tiny_model_name, "--output",
            str(tmp_path / "cache"), "--num-workers", "0"]
    line = error_exit_line(capsys, script.main, argv, progress_lines=True)  # the bar on: its line ends first
    assert "broken.png" in line
    assert script.main(["--csv", data.train_csv, "--model", tiny_model_name, "--output", str(tmp_path / "small"),
                        "--num-workers", "0", "--no-progress"]) == 0
    assert " kB, train transform" in capsys.readouterr().out  # not "0.00 GB"
