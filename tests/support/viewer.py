"""OHIF Viewer (the built ``@ohif/app`` that scripts/peers.sh unpacks) on loopback, over Orthanc's DICOMweb.

Orthanc 1.10 sends no CORS headers and its folder serving has no fallback to ``index.html`` for OHIF's routes,
so a small same-origin server serves ``dist/`` (any path that is not a file gets ``index.html``), an
``app-config.js`` whose one data source is that origin's ``/dicom-web/``, and proxies ``/dicom-web/`` to
Orthanc's DICOMweb plugin. Headless Chromium (Debian's, driven by playwright) opens it with WebGL on
SwiftShader; every request it makes is recorded, so that a test can show none leaves loopback.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.admin import CHROMIUM
from tests.support.net import free_port

OHIF_VERSION = "3.13.2"  # as pinned in scripts/peers.sh
OHIF_DIR = Path(os.environ.get("DICOMNODE_OHIF_DIR", "/opt/dicomnode-peers/ohif")) / OHIF_VERSION / "dist"
PROXIED = "/dicom-web/"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length",
               "proxy-authorization", "proxy-authenticate"}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


def ohif_dist() -> Path:
    """The unpacked viewer; a missing one is a failure (scripts/peers.sh installs it)."""
    if not (OHIF_DIR / "index.html").is_file():
        raise AssertionError(f"OHIF Viewer {OHIF_VERSION} is not unpacked at {OHIF_DIR}: run scripts/test.sh, "
                             "which installs the real peers")
    return OHIF_DIR


def app_config(origin: str) -> str:
    """OHIF's configuration: one DICOMweb data source at ``origin``/dicom-web, no dialogs, no study list fuss."""
    root = f"{origin}/dicom-web"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test PACS)", "name": "orthanc",
            "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
            "qidoSupportsIncludeField": False, "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "staticWado": False, "singlepart": "bulkdata,video", "dicomUploadEnabled": False,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/", "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True, "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False, "showLoadingIndicator": False, "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"}, "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _ViewerHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test records requests itself
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._reply(200, "text/javascript", self.server.config.encode())
        else:
            self._static(path)

    def _reply(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.dist
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # OHIF's routes (/viewer, /segmentation, ...) are the app's own
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._reply(200, content_type, target.read_bytes(), {"Cache-Control": "no-store"})

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        request = urllib.request.Request(f"{self.server.upstream}{self.path}", data=body, method=self.command,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                status, reply_headers, data = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            status, reply_headers, data = exc.code, exc.headers, exc.read()
        kept = {k: v for k, v in reply_headers.items() if k.lower() not in HOP_HEADERS | {"content-type"}}
        self._reply(status, reply_headers.get("Content-Type", "application/octet-stream"), data, kept)


class _ViewerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, upstream: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.upstream = upstream
        self.config = app_config(f"http://127.0.0.1:{port}")


@contextmanager
def ohif_server(orthanc_http_port: int) -> Iterator[str]:
    """OHIF on a free loopback port with ``/dicom-web/`` proxied to Orthanc; yields its origin."""
    server = _ViewerHTTPServer(free_port(), ohif_dist(), f"http://127.0.0.1:{orthanc_http_port}")
    thread = threading.Thread(target=server.serve_forever, name="ohif-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# WebGL in headless Chromium without a GPU: SwiftShader, which Chromium no longer picks by itself
WEBGL_ARGS = ("--no-sandbox", "--headless", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
              "--ignore-gpu-blocklist", "--disable-background-networking", "--disable-component-update",
              "--no-first-run", "--disable-sync", "--disable-dev-shm-usage")
# a first visit shows a guided tour over the viewer unless it was "already shown"
NO_TOUR = "window.localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"


@dataclass
class Requests:
    """Every URL the browser asked for (a test checks that none leaves loopback)."""

    urls: list[str] = field(default_factory=list)

    def hosts(self) -> set[str]:
        return {urlsplit(url).hostname or "" for url in self.urls if urlsplit(url).scheme in ("http", "https", "ws",
                                                                                               "wss")}


@contextmanager
def viewer_browser() -> Iterator[tuple[Any, Requests]]:
    """A browser context (1280x900) that records every request and skips OHIF's first-visit tour."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        raise AssertionError("Debian chromium is not installed at /usr/bin/chromium: run scripts/test.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(WEBGL_ARGS))
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_init_script(NO_TOUR)
            requests = Requests()
            context.on("request", lambda request: requests.urls.append(request.url))
            yield context, requests
        finally:
            browser.close()
