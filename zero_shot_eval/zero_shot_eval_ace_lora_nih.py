"""Zero-shot NIH ChestX-ray14 (14 findings, multi-label) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads chestxray14_test.csv from dataset_prep/chestx-ray_14_prep.py (Path, 14 label columns).

    python zero_shot_eval/zero_shot_eval_ace_lora_nih.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/chestxray14_test.csv

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys

from ace_lora.evaluation.command_line import task_main

main = task_main("nih")

if __name__ == "__main__":
    sys.exit(main())
