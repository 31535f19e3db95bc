"""Data: image loading (JPEG/PNG/DICOM), training datasets, synthetic demo data."""
