"""LC25000: one CSV (lc25000.csv, columns Path, label) of every image, label = class folder name.

Reads lung_colon_image_set/lung_image_sets/{lung_aca,lung_n,lung_scc} and
lung_colon_image_set/colon_image_sets/{colon_aca,colon_n}; Paths are written relative to the CSV's own
folder (--output-dir), where the evaluation resolves them by default.
"""
import argparse
import sys

from ace_lora.errors import main_guard
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--data-root", required=True, help="folder that holds lung_colon_image_set/")
    parser.add_argument("--output-dir", required=True, help="folder to write lc25000.csv to")
    return parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from ace_lora.data.prepare import prepare_lc25000  # after parsing: --help stays fast
    prepare_lc25000(args.data_root, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
