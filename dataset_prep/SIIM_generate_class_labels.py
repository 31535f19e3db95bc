"""SIIM-ACR Pneumothorax: zero-shot classification labels, one per unique ImageId.

Label is 1 if any row of the image has a mask, 0 if its EncodedPixels is -1. Writes siim_test.csv (a 30%
sample of the unique images, random_state=42) and siim_train.csv (the other 70%), columns ImageId, Label.
Reads stage_2_train.csv or stage 1 train-rle.csv.
"""
import argparse
import sys

from ace_lora.errors import main_guard
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--rle-csv", required=True, help="path to stage_2_train.csv or train-rle.csv")
    parser.add_argument("--output-dir", required=True, help="folder to write siim_test.csv and siim_train.csv to")
    return parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from ace_lora.data.prepare import prepare_siim_labels  # after parsing: --help stays fast
    prepare_siim_labels(args.rle_csv, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
