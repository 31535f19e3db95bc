"""Zero-shot RSNA Pneumonia (No Finding vs pneumonia) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads rsna_test.csv from dataset_prep/rsna_dataset_create.py (Path to DICOM, Target).

    python zero_shot_eval/zero_shot_eval_ace_lora_rsna.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/rsna_test.csv

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys

from ace_lora.evaluation.command_line import task_main

main = task_main("rsna")

if __name__ == "__main__":
    sys.exit(main())
