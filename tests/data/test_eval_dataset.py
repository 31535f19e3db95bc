"""The evaluation image list: unreadable files are flagged per item, never raised inside a worker."""
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ace_lora.data.eval_dataset import ImageListDataset, collate_eval_items
from ace_lora.data.image_cache import DecodedImages
from ace_lora.data.transforms import PixelTransform


def test_unreadable_items_are_flagged_and_the_rest_are_batched_in_order(tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(path)
        good.append(str(path))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [good[0], str(tmp_path / "bad.png"), good[1], str(tmp_path / "absent.png"), good[2]]
    Image.open(good[1]).convert("RGB").save(good[1])  # one colour image among greyscale ones
    transform = PixelTransform("eval", 8, [T.Resize((8, 8))])
    loader = DataLoader(ImageListDataset(DecodedImages(paths, transform)), batch_size=5, num_workers=1,
                        collate_fn=collate_eval_items)
    indices, images, unreadable = next(iter(loader))
    assert indices.tolist() == [0, 2, 4] and images.shape == (3, 3, 8, 8)  # greyscale repeated beside colour
    assert images.dtype == torch.uint8
    assert (images[0] == images[0, :1]).all()
    assert [index for index, _ in unreadable] == [1, 3]
    assert unreadable[0][1].startswith(f"cannot read image {tmp_path / 'bad.png'}")
    assert unreadable[1][1] == f"image not found: {tmp_path / 'absent.png'}"
    _, none, _ = collate_eval_items([(0, None, "x")])
    assert none is None
