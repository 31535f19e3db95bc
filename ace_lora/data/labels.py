"""Every label vocabulary in one place: class names, label columns and their orders.

Torch-free, so that command lines can offer them as choices without loading the model.
"""

# MIMIC-CXR's CheXpert labels, in mimic-cxr-2.0.0-chexpert.csv order (the training label columns).
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
# The CheXpert 5x200 file's label order (FORMATS.md), which differs from MIMIC's.
CHEXPERT_FILE_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                        "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                        "Pleural Other", "Fracture", "Support Devices")
CHEXPERT_5X200_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# The binary zero-shot sets: negative class first, as the released prompts name them.
RSNA_CLASSES = ("No Finding", "pneumonia")
SIIM_CLASSES = ("No Finding", "pneumothorax")
# What an uncertain (-1) CheXpert label becomes in training.
UNCERTAIN_POLICIES = ("zeros", "ones")

NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NIH_NO_FINDING = "No Finding"
# Class folder -> readable class name; the order is the class order of the evaluation.
LC25000_CLASSES = {
    "lung_aca": "lung adenocarcinoma",
    "lung_scc": "lung squamous cell carcinoma",
    "lung_n": "benign lung",
    "colon_aca": "colon adenocarcinoma",
    "colon_n": "benign colon",
}
MHIST_CLASSES = {"HP": "hyperplastic polyp", "SSA": "sessile serrated adenoma"}
