"""SIIM-ACR Pneumothorax: mask PNGs and segmentation splits.

Writes one 0/255 mask PNG per image, the union of all its RLE rows (empty for negatives), and
siim_segmentation_{train,val,test}.csv (70/15/15, random_state=0) with columns
ImageId, image_path, mask_path, has_pneumothorax. Images are <ImageId>.png or <ImageId>.dcm anywhere
under --image-dir (e.g. dicom-images-train/<study>/<series>/<ImageId>.dcm); images without a file are
reported and left out.
"""
import argparse
import sys

from ace_lora.errors import main_guard
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--rle-csv", required=True, help="path to stage_2_train.csv or train-rle.csv")
    parser.add_argument("--image-dir", required=True, help="folder searched recursively for <ImageId>.png/.dcm")
    parser.add_argument("--output-dir", required=True, help="folder to write the split CSVs to")
    parser.add_argument("--mask-dir", default=None, help="folder to write mask PNGs to (default: <output-dir>/masks)")
    parser.add_argument("--rle-format", choices=("auto", "relative", "absolute"), default="auto",
                        help="relative: stage 1 offsets from the previous run's end; absolute: stage 2 1-based "
                             "starts; auto (default): relative for train-rle*.csv, absolute for stage_2*.csv")
    parser.add_argument("--height", type=int, default=1024, help="mask height in pixels (default: 1024)")
    parser.add_argument("--width", type=int, default=1024, help="mask width in pixels (default: 1024)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of the CSV (quick runs)")
    return parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from ace_lora.data.prepare import prepare_siim_masks  # after parsing: --help stays fast
    prepare_siim_masks(args.rle_csv, args.image_dir, args.output_dir, mask_dir=args.mask_dir,
                       rle_format=args.rle_format, height=args.height, width=args.width, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
