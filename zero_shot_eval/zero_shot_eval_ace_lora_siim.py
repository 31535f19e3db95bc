"""Zero-shot SIIM-ACR Pneumothorax (No Finding vs pneumothorax) with ACE-LoRA or the bare BiomedCLIP baseline.

Reads siim_test.csv from dataset_prep/SIIM_generate_class_labels.py (ImageId, Label); images are
<ImageId>.png in --data-root, or a .png/.dcm of that name anywhere under it.

    python zero_shot_eval/zero_shot_eval_ace_lora_siim.py --checkpoint ACE_LoRA.pt \\
        --csv prepared/siim_test.csv --data-root /data/siim/png

See --help for every flag; the engine is ace_lora.evaluation.zero_shot.
"""
import sys

from ace_lora.evaluation.command_line import task_main

main = task_main("siim")

if __name__ == "__main__":
    sys.exit(main())
