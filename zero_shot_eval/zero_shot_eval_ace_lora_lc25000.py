"""Zero-shot LC25000 (5 lung and colon tissue classes) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads lc25000.csv from dataset_prep/lc25000_prep.py (Path, label = class folder).

    python zero_shot_eval/zero_shot_eval_ace_lora_lc25000.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/lc25000.csv

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys

from ace_lora.evaluation.command_line import task_main

main = task_main("lc25000")

if __name__ == "__main__":
    sys.exit(main())
