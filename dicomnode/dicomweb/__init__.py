"""DICOMweb (PS3.18): multipart bodies, STOW-RS storage, the results QIDO-RS and WADO-RS serve, and a STOW-RS client."""
