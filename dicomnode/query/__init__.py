"""The node asks its query peers (``query = true``; the PACS): how many instances a study holds
(:mod:`~dicomnode.query.counts`), which prior studies a patient has and their retrieval
(:mod:`~dicomnode.query.priors`), over the C-FIND, C-GET and C-MOVE of :mod:`~dicomnode.query.scu`.

Every question carries UIDs, a Patient ID and dates only, is bounded in time and in answers, is
audited (DICOM "Query"; "Begin Transferring DICOM Instances" for a retrieval) and never logs patient data.
"""
