"""MHIST: mhist_test.csv and mhist_train.csv (columns Path, label, partition) by the official partition.

Path is images/<Image Name> (the images/ folder next to annotations.csv, as downloaded), written relative
to the CSV's own folder (--output-dir), label HP or SSA (majority vote), partition train or test.
"""
import argparse
import sys

from ace_lora.errors import main_guard
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--annotations-csv", required=True, help="path to MHIST annotations.csv")
    parser.add_argument("--output-dir", required=True, help="folder to write mhist_test.csv and mhist_train.csv to")
    return parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from ace_lora.data.prepare import prepare_mhist  # after parsing: --help stays fast
    prepare_mhist(args.annotations_csv, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
