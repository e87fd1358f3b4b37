"""DICOM out: C-STORE of result objects to the PACS."""
