"""What both DICOM directions share: TLS contexts and pynetdicom's reactor."""
