"""Zero-shot LC25000 (5 lung and colon tissue classes) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads lc25000.csv from dataset_prep/lc25000_prep.py (Path, label = class folder).

    python zero_shot_eval/zero_shot_eval_ace_lora_lc25000.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/lc25000.csv

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ace_lora.errors import main_guard  # noqa: E402
from zero_shot_eval import run  # noqa: E402


@main_guard
def main(argv=None) -> int:
    run("lc25000", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
