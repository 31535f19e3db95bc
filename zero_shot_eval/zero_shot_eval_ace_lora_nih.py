"""Zero-shot NIH ChestX-ray14 (14 findings, multi-label) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads chestxray14_test.csv from dataset_prep/chestx-ray_14_prep.py (Path, 14 label columns).

    python zero_shot_eval/zero_shot_eval_ace_lora_nih.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/chestxray14_test.csv

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ace_lora.errors import main_guard  # noqa: E402
from zero_shot_eval import run  # noqa: E402


@main_guard
def main(argv=None) -> int:
    run("nih", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
