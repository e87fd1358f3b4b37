"""Remote inference, edge to cloud: placement, de-identification, the DICOMweb round trip."""
