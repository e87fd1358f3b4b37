"""Real peers on loopback: Orthanc (the PACS), the node as a subprocess, DCMTK tools, dciodvfy, PixelMed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.children import dies_with_us
from tests.support.logs import stageless
from tests.support.net import free_port, port_open, wait_for

REPO = Path(__file__).resolve().parents[2]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # else ~45 ms per C-STORE (Nagle)


def require(tool: str) -> str:
    """The path of ``tool``; a missing real peer is a failure (scripts/peers.sh installs them)."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if path is None:
        raise AssertionError(f"{tool} is not installed: run scripts/test.sh, which installs the real peers")
    return path


def storescu(port: int, files: list[Path] | Path, *, called: str, calling: str = "STORESCU",
             extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = [require("storescu"), "-aet", calling, "-aec", called, *extra_args, "127.0.0.1", str(port)]
    if isinstance(files, Path):
        args += ["+sd", "+r", str(files)] if files.is_dir() else [str(files)]
    else:
        args += [str(f) for f in files]
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=300, check=False)


@contextmanager
def _listening(args: list[str], port: int) -> Iterator[int]:
    """A DCMTK SCP started with ``args``, once it listens on ``port``; stopped on exit."""
    process = subprocess.Popen(args, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               **dies_with_us())
    try:
        wait_for(lambda: process.poll() is None and port_open(port), timeout=30, msg=f"{Path(args[0]).name} listening")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def storescp(folder: Path, *, aet: str = "STORESCP", extra_args: tuple[str, ...] = ()) -> Iterator[int]:
    """DCMTK's storescp on a free loopback port, writing what it receives to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with _listening([require("storescp"), "-aet", aet, "-od", str(folder), *extra_args, str(port)], port):
        yield port


@contextmanager
def dcmqrscp(folder: Path, *, aet: str = "ARCHIVE") -> Iterator[int]:
    """DCMTK's dcmqrscp on a free loopback port: it stores into ``folder`` and, unlike storescp, refuses an
    association whose called AE title is not ``aet`` (A-ASSOCIATE-RJ, called AE title not recognised)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder.with_name(folder.name + ".cfg")  # its database folder holds index.dat beside the files
    config.write_text(f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
                      "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
                      f"AETable BEGIN\n{aet} {folder} RW (100, 1024mb) ANY\nAETable END\n")
    with _listening([require("dcmqrscp"), "--single-process", "-c", str(config)], port):
        yield port


def echoscu(port: int, *, called: str, calling: str, extra_args: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("echoscu"), "-aet", calling, "-aec", called, *extra_args, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=DCMTK_ENV, timeout=60, check=False)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Errors and warnings that dicom3tools' validator reports for ``path``."""
    result = subprocess.run([require("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120,
                            check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# PixelMed's SR template check compiles XPath beyond the JDK's default secure-processing limits
PIXELMED_JAVA_OPTIONS = ("-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
                         "-Djdk.xml.xpathTotalOpLimit=0")


def sr_validator(path: Path) -> tuple[list[str], list[str]]:
    """Errors and warnings that PixelMed's DicomSRValidator (templates, context groups) reports for ``path``."""
    if not PIXELMED_JAR.is_file():
        raise AssertionError("pixelmed-apps is not installed: run scripts/test.sh, which installs the real peers")
    result = subprocess.run([require("java"), *PIXELMED_JAVA_OPTIONS, "-cp", str(PIXELMED_JAR),
                             "com.pixelmed.validate.DicomSRValidator", str(path)],
                            capture_output=True, text=True, timeout=300, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    if "IOD validation complete" not in lines:  # it stopped early (unreadable file, JVM trouble)
        raise AssertionError(f"DicomSRValidator did not finish on {path.name}: {lines[-5:]}")
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    """A throwaway Orthanc on loopback (after ../shared/tools/orthanc-loopback.sh)."""

    folder: Path
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    aet: str = "ORTHANC"
    strict: bool = False  # only AE titles listed as modalities may associate at all
    receive_delay: float = 0.0  # seconds the PACS takes over each C-STORE (a slow PACS: long send phases)
    dicomweb: bool = False  # load the DICOMweb plugin (Debian orthanc-dicomweb): STOW/QIDO/WADO at /dicom-web/
    reject_stow: bool = False  # answer every STOW-RS request 403 Forbidden (an archive that rejects the node)
    receipts_enabled: bool = True  # the Lua receipt log; off for benchmarks, which time Orthanc as shipped
    process: subprocess.Popen[bytes] | None = None

    @property
    def receipts_log(self) -> Path:
        return self.folder / "receipts.log"

    def _receipts_script(self) -> Path:
        """Lua run by Orthanc for every C-STORE it receives, before storing: one line per receipt, so
        that duplicates show even though Orthanc overwrites by SOP Instance UID."""
        script = self.folder / "receipts.lua"
        delay = f'os.execute("sleep {self.receive_delay:g}")' if self.receive_delay else ""
        script.write_text(f"""
function ReceivedInstanceFilter(dicom, origin, info)
  local f = io.open("{self.receipts_log}", "a")
  f:write(dicom["StudyInstanceUID"] .. " " .. dicom["Modality"] .. " " .. dicom["SOPInstanceUID"] .. "\\n")
  f:close()
  {delay}
  return true
end
{self._http_filter()}
""")
        return script

    def _http_filter(self) -> str:
        if not self.reject_stow:
            return ""
        return """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return not (method == "POST" and string.find(uri, "/dicom-web/", 1, true) == 1)
end
"""

    def receipts(self, study_uid: str) -> Counter[tuple[str, str]]:
        """How often each (modality, SOP Instance UID) of the study was received: deliveries, not instances."""
        counts: Counter[tuple[str, str]] = Counter()
        if self.receipts_log.is_file():
            for line in self.receipts_log.read_text().splitlines():
                study, modality, sop = line.split()
                if study == study_uid:
                    counts[(modality, sop)] += 1
        return counts

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "TEST-PACS", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "StorageCompression": False, "Plugins": [],
            "HttpServerEnabled": True, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": self.aet,
            "DicomPort": self.dicom_port, "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": not self.strict,
            "DicomAlwaysAllowStore": not self.strict, "DicomCheckModalityHost": False, "DicomScuTimeout": 30,
            "DicomModalities": {}, "OverwriteInstances": True, "SaveJobs": False, "ConcurrentJobs": 2,
            "StableAge": 60, "LuaScripts": [str(self._receipts_script())] if self.receipts_enabled else [],
        }
        if self.dicomweb:
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        with open(self.folder / "orthanc.log", "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([require("Orthanc"), str(self.folder / "orthanc.json")],
                                            stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV, **dies_with_us())
        wait_for(lambda: self._alive() and self.get("/system"), timeout=60, msg="Orthanc answering HTTP")
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("Orthanc exited: " + (self.folder / "orthanc.log").read_text()[-2000:])
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=120) as rsp:
            raw = rsp.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def add_modality(self, name: str, aet: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1", "Port": port})

    def study_id(self, study_uid: str) -> str | None:
        hits = self.request("POST", "/tools/lookup", study_uid.encode())
        return next((h["ID"] for h in hits if h["Type"] == "Study"), None)

    def series_of(self, study_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/studies/{study_id}/series"))

    def download(self, instance_id: str, path: Path) -> Path:
        path.write_bytes(self.get(f"/instances/{instance_id}/file"))
        return path


@dataclass
class NodeProcess:
    """``python -m dicomnode serve`` as a real process, configured through DICOMNODE_* variables."""

    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    ae_title: str = "DICOMNODE"
    command: str = "serve"  # or one role: receive, work, web
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.env.get("DICOMNODE_DATA_DIR", self.folder / "data"))

    @property
    def log_path(self) -> Path:
        return self.folder / "node.log"

    def start(self) -> NodeProcess:
        env = {**os.environ, "DICOMNODE_DATA_DIR": str(self.data_dir), "DICOMNODE_PORT": str(self.port),
               "DICOMNODE_HOST": "127.0.0.1", "DICOMNODE_AE_TITLE": self.ae_title, **self.env}
        env.pop("DICOMNODE_CONFIG", None)
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([sys.executable, "-m", "dicomnode", self.command], cwd=REPO, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, **dies_with_us())
        if self.command in ("serve", "receive"):
            wait_for(lambda: self._alive() and port_open(self.port), timeout=120, msg="node listening")
        else:
            self.wait_started()
        return self

    def wait_started(self) -> None:
        """Until the node has logged that it started (all its roles up), failing if it exits first."""
        wait_for(lambda: self._alive() and "node started" in self.log_path.read_text(errors="replace"),
                 timeout=120, msg=f"{self.command} started")

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("node exited: " + self.log_path.read_text()[-3000:])
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"node did not stop within {timeout} s after signal {sig}") from None
        lines = stageless(self.log_path.read_text(errors="replace")) if self.log_path.exists() else []
        assert not lines, f"the node logged lines without one of its stages: {lines[:5]}"
        return code
