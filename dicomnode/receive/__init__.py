"""DICOM in: the pynetdicom SCP (C-ECHO, C-STORE)."""
