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


def make_radiograph(
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    bits_stored: int = 12,
    study_uid: str | None = None,
    series_description: str = "CHEST PA",
    series_number: int = 3,
) -> Dataset:
    """A DX (for presentation) or CR image of ``pixels`` (stored values, uint16), with no PHI.

    With ``monochrome1`` the stored values are ``2**bits_stored - 1 - pixels`` under MONOCHROME1, so that
    the image displays as ``pixels`` does under MONOCHROME2. ``window`` adds WindowCenter/Width and
    ``voi_lut`` a VOI LUT Sequence (first value mapped: 0, 16-bit entries).
    """
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

    sop_class = DigitalXRayImageStorageForPresentation if modality == "DX" else ComputedRadiographyImageStorage
    stored = (2**bits_stored - 1 - pixels) if monochrome1 else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "SYNTHETIC^RADIOGRAPH"
    ds.PatientID = "SYN-0002"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC2"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = "synthetic"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.ImagerPixelSpacing = ["0.5", "0.5"]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.AcquisitionDeviceProcessingDescription = ""
        ds.KVP = "120"
        ds.ExposureIndex = 500
        ds.ViewPosition = "PA"
        ds.DetectorType = "DIRECT"
    else:
        ds.ImagerPixelSpacing = ["0.5", "0.5"]
    ds.AnatomicRegionSequence = DicomSequence([])
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.PositionerType = ""
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter = f"{window[0]}"
        ds.WindowWidth = f"{window[1]}"
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = [int(v) for v in voi_lut]
        ds.VOILUTSequence = DicomSequence([item])
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def ras_to_source(array: np.ndarray) -> np.ndarray:
    """An ``(x, y, z)`` RAS-ordered array as :func:`make_ct_series` lays it out: ``(slice, row, column)``."""
    out: np.ndarray = np.ascontiguousarray(array[::-1, ::-1, :].transpose(2, 1, 0))
    return out


def make_ct_series(hu: np.ndarray, spacing: float, *, study_uid: str, series_description: str = "CHEST CT",
                   series_number: int = 2) -> list[Dataset]:
    """An axial CT series of ``hu`` (an ``(x, y, z)`` array in RAS order, isotropic ``spacing`` mm), no PHI.

    Slice k is z index k; row r and column c are y and x reversed (LPS), so that :func:`ras_to_source`
    of an array on the same grid (a ground-truth mask) lies exactly on the slices' pixels. UIDs are
    derived from ``study_uid``.
    """
    from pydicom.uid import CTImageStorage

    nx, ny, nz = hu.shape
    pixels = np.clip(np.rint(ras_to_source(hu) + 1024), 0, 4095).astype(np.uint16)
    series_uid, frame_uid = f"{study_uid}.1", f"{study_uid}.2"
    datasets = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{study_uid}.3.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SYNTHETIC^CT", "SYN-0003", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC3"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "synthetic", "CHEST"
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, series_description, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = [f"{-(nx - 1) / 2 * spacing:.4f}", f"{-(ny - 1) / 2 * spacing:.4f}",
                                   f"{(k - (nz - 1) / 2) * spacing:.4f}"]
        ds.PixelSpacing = [f"{spacing}", f"{spacing}"]
        ds.SliceThickness = f"{spacing}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = pixels[k].tobytes()
        datasets.append(ds)
    return datasets
