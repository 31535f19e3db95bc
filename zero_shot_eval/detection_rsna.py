"""RSNA pneumonia detection on a frozen ACE-LoRA / plain-LoRA / BiomedCLIP image encoder.

Reads rsna_detection_{train,val,test}.csv from dataset_prep/rsna_dataset_create.py (patientId, Path,
boxes JSON [[x1, y1, x2, y2], ...] in pixels of the 1024 x 1024 image). torchvision FCOS on a ViTDet
simple feature pyramid is trained on cached patch-token grids (early stopping on validation
mAP@[.40:.75]), or --zero-shot turns connected regions of the similarity to 'pneumonia' into boxes.
Boxes are evaluated in original pixels: mAP over IoU 0.40:0.05:0.75 (MGCA-style), COCO mAP@[.50:.95]
and mAP@.50.

    python zero_shot_eval/detection_rsna.py --checkpoint ACE_LoRA.pt --split-dir prepared/rsna \\
        --train-fraction 0.01 --output-dir results/rsna_det_ace_lora_1pct
    python zero_shot_eval/detection_rsna.py --demo          # synthetic data, tiny model, CPU

See --help for every flag; the work is done by ace_lora.evaluation.dense.benchmark.
"""
import sys

from ace_lora.evaluation.command_line import dense_main

main = dense_main("rsna_detection")

if __name__ == "__main__":
    sys.exit(main())
