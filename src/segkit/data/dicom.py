"""DICOM files (SIIM-ACR Pneumothorax): the pixels and the size of a greyscale radiograph through pydicom, and a
writer of JPEG-baseline compressed files (the real data's form) for synthetic data.

pydicom decodes compressed pixel data through a handler: JPEG Baseline (transfer syntax 1.2.840.10008.1.2.4.50,
what SIIM-ACR uses) through Pillow, which segkit already needs; other compressions through pylibjpeg or GDCM.
Any file pydicom cannot read or decode raises segkit's DataError naming the file and what to install.
Works with pydicom 2.4 and 3.x.
"""
from __future__ import annotations

import inspect
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import DataError

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # SOP class of an image made outside a modality

# transfer syntax UID prefix or UID -> what decodes it
_HANDLERS = (
    (("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"),
     "Pillow (pip install pillow) or pylibjpeg (pip install pylibjpeg pylibjpeg-libjpeg)"),
    (("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
     "pylibjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or GDCM (pip install python-gdcm)"),
    (("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
     "pylibjpeg (pip install pylibjpeg pylibjpeg-openjpeg) or GDCM (pip install python-gdcm)"),
)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DataError("reading DICOM files needs pydicom: pip install pydicom") from None
    return pydicom


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: str | os.PathLike, header_only: bool) -> Any:
    """The pydicom dataset of `path`; DataError when it is missing or not a readable DICOM file."""
    pydicom = _pydicom()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a truncated file warns, then lacks elements: checked below
            ds = pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pydicom.errors.InvalidDicomError:  # its message ends in advice for pydicom's API, not for a user
        raise DataError(f"{path}: not a readable DICOM file (no 'DICM' marker after the 128-byte preamble: not "
                        "a DICOM file?)") from None
    except Exception as exc:  # pydicom raises many kinds on a damaged file
        raise DataError(f"{path}: not a readable DICOM file ({_one_line(exc)})") from None
    for key in ("Rows", "Columns"):
        if not isinstance(ds.get(key), int) or ds.get(key) <= 0:
            raise DataError(f"{path}: the DICOM header lacks {key} (a damaged or non-image DICOM file)")
    return ds


def dicom_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) = (Rows, Columns) of a DICOM image, from its header only (no pixels read)."""
    ds = _read(path, header_only=True)
    return int(ds.Rows), int(ds.Columns)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """The pixels of a greyscale 8-bit DICOM image as uint8 (H, W), decoded by pydicom's handlers
    (MONOCHROME1 inverted so that bright is dense, as MONOCHROME2)."""
    ds = _read(path, header_only=False)
    if "PixelData" not in ds:
        raise DataError(f"{path}: the DICOM file holds no pixel data (truncated or damaged?)")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # handler missing, or data the handler cannot decode
        raise DataError(_decode_error(path, syntax, exc)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim != 2 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: expected one greyscale frame (MONOCHROME2), got {photometric} pixels of "
                        f"shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        if int(ds.get("BitsStored", 8)) > 8 or pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{path}: expected 8-bit pixels (as SIIM-ACR's), got {ds.get('BitsStored')}-bit "
                            f"{pixels.dtype}")
        pixels = pixels.astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels)


def _decode_error(path: str | os.PathLike, syntax: str, exc: BaseException) -> str:
    """One line: which file, which compression, and the handler to install (or that the data is damaged)."""
    name = _syntax_name(syntax)
    handler = next((h for uids, h in _HANDLERS if syntax in uids), "GDCM (pip install python-gdcm) or pylibjpeg")
    text = str(exc).lower()
    missing = ("missing" in text and "depend" in text) or "no pixel data handler" in text
    if missing or isinstance(exc, (ImportError, NotImplementedError)):
        return (f"{path}: cannot decode its {name} pixel data: no installed handler can ({_one_line(exc, 100)}); "
                f"install {handler}")
    return f"{path}: its {name} pixel data is damaged or cannot be decoded ({_one_line(exc)}); it needs {handler}"


def _syntax_name(syntax: str) -> str:
    try:
        from pydicom.uid import UID

        return f"{UID(syntax).name} ({syntax})" if syntax else "uncompressed"
    except Exception:  # an unknown UID has no name
        return syntax or "uncompressed"


def write_dicom_jpeg(path: str | os.PathLike, pixels: np.ndarray, attributes: dict[str, Any] | None = None,
                     quality: int = 95) -> None:
    """Write a greyscale uint8 (H, W) image as a DICOM file whose pixel data is one JPEG-baseline frame (encoded
    by Pillow, encapsulated by pydicom): MONOCHROME2, 8 bits, Rows/Columns, Secondary Capture, plus
    `attributes` (DICOM keywords, e.g. SOPInstanceUID, StudyInstanceUID, PatientID)."""
    pydicom = _pydicom()
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"write_dicom_jpeg: expected a uint8 (H, W) image, got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)  # baseline, not progressive
    attributes = dict(attributes or {})
    instance = str(attributes.pop("SOPInstanceUID", "") or generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = JPEG_BASELINE
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, instance
    ds.Modality = "CR"
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    params = inspect.signature(pydicom.dcmwrite).parameters
    if "enforce_file_format" in params:  # pydicom 3
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def find_dicoms(folder: Path, what: str) -> dict[str, Path]:
    """Every `*.dcm` under `folder` (nested study/series folders) by file stem; DataError on a stem found twice."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.dcm")):
        if path.stem in found:
            raise DataError(f"{path}: {what} {path.stem} is also at {found[path.stem]}; image ids must be unique")
        found[path.stem] = path
    return found
