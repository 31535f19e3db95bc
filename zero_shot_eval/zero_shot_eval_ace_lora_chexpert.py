"""Zero-shot CheXpert 5x200 with ACE-LoRA or the bare BiomedCLIP baseline.

Reads chexpert_5x200.csv (the official file: Path and the 14 CheXpert label columns).

    python zero_shot_eval/zero_shot_eval_ace_lora_chexpert.py --checkpoint ACE_LoRA.pt \\
        --csv chexpert_5x200.csv --data-root /data/chexpert

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ace_lora.errors import main_guard  # noqa: E402
from zero_shot_eval import run  # noqa: E402


@main_guard
def main(argv=None) -> int:
    run("chexpert", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
