"""PixelMed's DicomSRValidator (Debian package pixelmed-apps) next to dciodvfy (tests/support/peers.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")


def sr_validator_errors(path: Path) -> list[str]:
    """The lines starting with "Error" that DicomSRValidator prints for the SR at ``path``."""
    java = shutil.which("java")
    if java is None or not PIXELMED_JAR.is_file():
        pytest.fail("java and /usr/share/java/pixelmed.jar are needed (apt-get install pixelmed-apps)")
    result = subprocess.run([java, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    return [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]
