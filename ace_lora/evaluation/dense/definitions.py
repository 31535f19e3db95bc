"""The dense benchmarks' definitions: split CSV layouts, the two tasks and their flag defaults, and the
kinds of patch features. Torch-free, so that their command lines answer --help at once."""
from dataclasses import dataclass
from typing import Optional, Tuple

FEATURE_KINDS = ("last-layer", "hgnn")
SPLITS = ("train", "val", "test")
IMAGE_FILE = "image_file"  # resolved image path column added by `read_split`
MASK_FILE = "mask_file"  # resolved mask path column (segmentation)


@dataclass(frozen=True)
class SplitLayout:
    prefix: str  # file names are <prefix>_<split>.csv
    id_column: str
    image_column: str
    columns: Tuple[str, ...]
    mask_column: Optional[str] = None
    label_column: Optional[str] = None  # 0/1 image label (segmentation)
    boxes_column: Optional[str] = None  # JSON box lists (detection)


SIIM_SEGMENTATION = SplitLayout("siim_segmentation", "ImageId", "image_path",
                                ("ImageId", "image_path", "mask_path", "has_pneumothorax"),
                                mask_column="mask_path", label_column="has_pneumothorax")
RSNA_DETECTION = SplitLayout("rsna_detection", "patientId", "Path", ("patientId", "Path", "boxes"),
                             boxes_column="boxes")


@dataclass(frozen=True)
class DenseTask:
    name: str
    title: str
    layout: SplitLayout
    class_name: str  # what the zero-shot prompts name
    defaults: dict  # flag defaults of a real run
    demo_defaults: dict  # flag defaults under --demo (flags and --config still win)


DENSE_TASKS = {
    "siim_segmentation": DenseTask(
        "siim_segmentation", "SIIM-ACR pneumothorax segmentation", SIIM_SEGMENTATION, "pneumothorax",
        defaults=dict(epochs=50, lr=5e-4, patience=10, head_channels=256),
        demo_defaults=dict(epochs=25, lr=2e-3, patience=10, head_channels=64, num_workers=0, device="cpu",
                           bootstrap=200, output_dir="demo_output/siim_segmentation")),
    "rsna_detection": DenseTask(
        "rsna_detection", "RSNA pneumonia detection", RSNA_DETECTION, "pneumonia",
        defaults=dict(epochs=50, lr=1e-4, patience=10, head_channels=256, head_convs=4),
        demo_defaults=dict(epochs=20, lr=1e-3, patience=10, head_channels=64, head_convs=2, num_workers=0,
                           device="cpu", bootstrap=50, output_dir="demo_output/rsna_detection")),
}
VALIDATION_SCORES = {"siim_segmentation": "mean Dice", "rsna_detection": "mAP@[.40:.75]"}  # what fit_head stops on
