"""DICOM out: C-STORE (``scu``) and STOW-RS (``stow``) of result objects, and the per-destination
delivery ledger (``deliver``)."""
