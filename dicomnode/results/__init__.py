"""DICOM out objects, built only with highdicom: SEG and TID 1500 SR in the source study."""
