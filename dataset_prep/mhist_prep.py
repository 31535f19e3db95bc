"""MHIST: mhist_test.csv and mhist_train.csv (columns Path, label, partition) by the official partition.

Path is images/<Image Name>, label HP or SSA (majority vote), partition train or test.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ace_lora.errors import main_guard  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations-csv", required=True, help="path to MHIST annotations.csv")
    parser.add_argument("--output-dir", required=True, help="folder to write mhist_test.csv and mhist_train.csv to")
    return parser.parse_args(argv)


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    from ace_lora.data.prepare import prepare_mhist  # after parsing: --help stays fast
    prepare_mhist(args.annotations_csv, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
