"""RSNA Pneumonia: zero-shot classification split and detection split from stage_2_train_labels.csv.

Writes rsna_train.csv / rsna_test.csv (85/15 over all patients: patientId, Path, Target, boxes) and
rsna_detection_{train,val,test}.csv (70/15/15 over positive patients: patientId, Path, boxes), where
boxes is a JSON list of [x1, y1, x2, y2] pixel boxes.
"""
import argparse
import sys

from ace_lora.data.paths import RSNA_IMAGE_DIR
from ace_lora.errors import main_guard
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--labels-csv", required=True, help="path to stage_2_train_labels.csv")
    parser.add_argument("--output-dir", required=True, help="folder to write the split CSVs to")
    parser.add_argument("--data-root", default=None,
                        help="folder that holds --image-dir (default: the labels CSV's folder); Path is written "
                             "relative to the CSV's own folder (--output-dir)")
    parser.add_argument("--image-dir", default=RSNA_IMAGE_DIR,
                        help="image folder under --data-root")
    parser.add_argument("--absolute-paths", action="store_true",
                        help="write absolute image paths instead of paths relative to --output-dir")
    parser.add_argument("--check-images", action="store_true",
                        help="check that every image file exists; patients without one are reported and left out")
    return parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from ace_lora.data.prepare import prepare_rsna  # after parsing: --help stays fast
    prepare_rsna(args.labels_csv, args.output_dir, data_root=args.data_root, image_dir=args.image_dir,
                 absolute_paths=args.absolute_paths, check_images=args.check_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
