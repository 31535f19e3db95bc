"""SIIM-ACR pneumothorax segmentation on a frozen ACE-LoRA / plain-LoRA / BiomedCLIP image encoder.

Reads siim_segmentation_{train,val,test}.csv from dataset_prep/SIIM_generate_mask.py (ImageId,
image_path, mask_path, has_pneumothorax; 0/255 mask PNGs). A SETR-PUP-style decoder is trained on
cached patch tokens (early stopping on validation Dice), or --zero-shot thresholds the similarity to
'pneumothorax'. Dice is per image at probability 0.5, at the model input resolution, an empty
prediction on an empty mask counting 1 (MGCA).

    python zero_shot_eval/segmentation_siim.py --checkpoint ACE_LoRA.pt --split-dir prepared/siim \\
        --train-fraction 0.1 --output-dir results/siim_seg_ace_lora_10pct
    python zero_shot_eval/segmentation_siim.py --demo          # synthetic data, tiny model, CPU

See --help for every flag; the work is done by ace_lora.evaluation.dense.benchmark.
"""
import sys

from ace_lora.evaluation.command_line import dense_main

main = dense_main("siim_segmentation")

if __name__ == "__main__":
    sys.exit(main())
