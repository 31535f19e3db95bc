"""Dense benchmarks on frozen ACE-LoRA image encoders: SIIM segmentation and RSNA detection.

definitions  split CSV layouts, the two tasks and their flag defaults, the kinds of patch features (torch-free)
features     frozen patch-token grids, the model's input transform, the feature cache
splits       dataset_prep CSVs, training subsets (fraction, balanced), id lists
head_training the early-stopping loop shared by both heads
segmentation SETR-PUP-style decoder, focal + Dice loss
detection    FCOS on a ViTDet simple feature pyramid built from the token grid
localisation training-free similarity maps, thresholds, connected-region boxes
benchmark    the end-to-end runs behind zero_shot_eval/segmentation_siim.py and detection_rsna.py
demo_data    demo data in the dataset_prep layouts
"""
