"""MIMIC-CXR: the training CSV (one row per frontal image) from MIMIC-CXR-JPG and the MIMIC-CXR reports.

Columns: image_path (relative to --mimic-root, e.g. files/p10/p10000032/s50414267/<dicom_id>.jpg),
report (FINDINGS + IMPRESSION), subject_id, study_id, dicom_id, split (train/validate/test), then the 14
CheXpert labels as 1/0, with uncertain labels kept as -1 by default so that train.py's
--uncertain-policy decides what they become (empty labels are written as 0). Lateral and empty views,
images without a split or an image file, and images whose report is missing or empty are left out;
every exclusion is counted in the printed summary.
Train with --data-root set to --mimic-root (or write the CSV into --mimic-root).
"""
import argparse
import os
import sys

from ace_lora.data.mimic import (
    CHEXPERT_CSV,
    METADATA_CSV,
    SPLIT_CSV,
    UNCERTAIN_POLICIES,
    build_training_table,
)
from ace_lora.errors import (
    UserInputError,
    main_guard,
)
from ace_lora.io import check_output_file
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config

SPLITS = ("train", "validate", "test")
KEEP_UNCERTAIN = "keep"
PREP_POLICIES = (KEEP_UNCERTAIN,) + UNCERTAIN_POLICIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--mimic-root", required=True,
                        help="MIMIC-CXR-JPG folder that holds files/ (and, by default, the three CSV files)")
    parser.add_argument("--reports-root", default=None,
                        help="MIMIC-CXR folder that holds the reports as files/pXX/pSUBJECT/sSTUDY.txt "
                             "(default: --mimic-root)")
    parser.add_argument("--metadata", default=None,
                        help=f"metadata CSV (default: <mimic-root>/{METADATA_CSV}, or the .csv.gz as downloaded)")
    parser.add_argument("--split", default=None,
                        help=f"official split CSV (default: <mimic-root>/{SPLIT_CSV}, or the .csv.gz)")
    parser.add_argument("--chexpert", default=None,
                        help=f"CheXpert label CSV (default: <mimic-root>/{CHEXPERT_CSV}, or the .csv.gz)")
    parser.add_argument("--uncertain-policy", choices=PREP_POLICIES, default=KEEP_UNCERTAIN,
                        help="uncertain labels (-1): 'keep' writes -1, so that train.py's --uncertain-policy maps "
                             "them when training (one place decides); 'zeros' (the released method) or 'ones' "
                             "map them here, and train.py's --uncertain-policy then has nothing left to map; "
                             "empty labels always become 0 (default: keep)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="which official splits to write; the split column tells them apart (default: all)")
    parser.add_argument("--output", default="mimic_cxr_train.csv", help="CSV to write (default: mimic_cxr_train.csv)")
    return parser


def default_csv(root, name):
    """`root/name`, or `root/name.gz` (as PhysioNet ships them) when only that exists."""
    path = os.path.join(root, name)
    return path + ".gz" if not os.path.isfile(path) and os.path.isfile(path + ".gz") else path


def print_summary(stats):
    views = ", ".join(f"{view} {n}" for view, n in stats["excluded_views"].items()) or "none"
    print(f"images in metadata: {stats['images']}")
    print(f"excluded non-frontal views: {sum(stats['excluded_views'].values())} ({views})")
    print(f"excluded frontal images without a split: {stats['no_split']}")
    print(f"excluded frontal images without an image file: {stats['missing_image']}")
    for key, what in (("missing_report", "missing"), ("empty_report", "empty")):
        print(f"excluded images whose report is {what}: {stats[key]['images']} ({stats[key]['studies']} studies)")
    sources = ", ".join(f"{source} {n}" for source, n in stats["report_sources"].items()) or "none"
    print(f"report text by source (studies): {sources}")
    print(f"studies without CheXpert labels (labels set to 0): {stats['studies_without_labels']}")


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    check_output_file(args.output)  # before the work, not after it
    root = args.mimic_root
    table, stats = build_training_table(
        root, args.metadata or default_csv(root, METADATA_CSV), args.split or default_csv(root, SPLIT_CSV),
        args.chexpert or default_csv(root, CHEXPERT_CSV), reports_root=args.reports_root,
        uncertain_policy=None if args.uncertain_policy == KEEP_UNCERTAIN else args.uncertain_policy)
    print_summary(stats)
    table = table[table["split"].isin(args.splits)]
    if table.empty:
        raise UserInputError(f"no rows left to write for split(s) {', '.join(args.splits)} "
                             "(see the exclusions above)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    table.to_csv(args.output, index=False)
    per_split = ", ".join(f"{split} {n}" for split, n in table["split"].value_counts().sort_index().items())
    print(f"wrote {args.output}: {len(table)} rows ({per_split})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
