"""NIH ChestX-ray14: one-hot CSVs of the official test list.

Writes chestxray14_test.csv with columns Image Index, Path (relative to the CSV's folder) and one 0/1
column per label (Atelectasis ... Hernia; 'No Finding' is all zeros) for int(--fraction x the test
list's length) images: as released, the first test-list images in the data-entry CSV's order. The release
validates on it (it chooses the best epoch), so chestxray14_heldout.csv, the rest of the test list less
those patients, is the held-out set to report (configs/paper/ do).
"""
import argparse
import sys

from ace_lora.errors import main_guard
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--data-entry-csv", required=True, help="path to Data_Entry_2017_v2020.csv")
    parser.add_argument("--test-list", required=True, help="path to test_list.txt (one image file name a line)")
    parser.add_argument("--output-dir", required=True,
                        help="folder to write chestxray14_test.csv and chestxray14_heldout.csv to")
    parser.add_argument("--fraction", type=float, default=0.2,
                        help="how many test images to keep, as a fraction of the test list's length, taken in "
                             "data-entry order as in the paper (default: 0.2; 1.0 for all)")
    return parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from ace_lora.data.prepare import prepare_nih  # after parsing: --help stays fast
    prepare_nih(args.data_entry_csv, args.test_list, args.output_dir, fraction=args.fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
