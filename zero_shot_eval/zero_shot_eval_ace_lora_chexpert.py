"""Zero-shot CheXpert 5x200 with ACE-LoRA or the bare BiomedCLIP baseline.

Reads chexpert_5x200.csv (the official file: Path and the 14 CheXpert label columns).

    python zero_shot_eval/zero_shot_eval_ace_lora_chexpert.py --checkpoint ACE_LoRA.pt \\
        --csv chexpert_5x200.csv --data-root /data/chexpert

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys

from ace_lora.evaluation.command_line import task_main

main = task_main("chexpert")

if __name__ == "__main__":
    sys.exit(main())
