"""dicomnode: a DICOM AI node beside the PACS.

Importing this package loads neither torch nor any socket.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
