"""Synthetic MR series written with pydicom: no PHI, known geometry, known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def make_series(
    n_slices: int = 20,
    rows: int = 32,
    columns: int = 24,
    *,
    spacing: tuple[float, float] = (0.8, 0.9),
    slice_step: float = 2.0,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    study_uid: str | None = None,
    series_description: str = "T1 3D sag",
    body_part: str = "BRAIN",
    patient_name: str = "SYNTHETIC^PHANTOM",
    patient_id: str = "SYN-0001",
    slope: float = 2.0,
    intercept: float = -100.0,
    series_number: int = 7,
) -> list[Dataset]:
    """An MR series whose slice k has pixel value ``(k + 1) * 10 + row`` before rescale."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    row_cos = np.asarray(orientation[:3])
    col_cos = np.asarray(orientation[3:])
    normal = np.cross(row_cos, col_cos)
    datasets = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Modality = "MR"
        ds.Manufacturer = "synthetic"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = body_part
        ds.InstanceNumber = n_slices - k  # deliberately reversed: sorting must use positions
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(origin) + k * slice_step * normal]
        ds.PixelSpacing = [f"{spacing[0]}", f"{spacing[1]}"]
        ds.SliceThickness = f"{slice_step}"
        ds.SpacingBetweenSlices = f"{slice_step}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope}"
        ds.RescaleIntercept = f"{intercept}"
        ds.EchoTrainLength = 1
        pixels = (np.arange(rows, dtype=np.uint16)[:, None] + (k + 1) * 10) * np.ones((1, columns), np.uint16)
        ds.PixelData = pixels.tobytes()
        datasets.append(ds)
    return datasets


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"IM{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
