"""Zero-shot MHIST (hyperplastic polyp vs sessile serrated adenoma) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads mhist_test.csv from dataset_prep/mhist_prep.py (Path, label HP|SSA).

    python zero_shot_eval/zero_shot_eval_ace_lora_mhist.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/mhist_test.csv

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys

from ace_lora.evaluation.command_line import task_main

main = task_main("mhist")

if __name__ == "__main__":
    sys.exit(main())
