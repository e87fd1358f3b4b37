"""A throwaway PostgreSQL cluster on loopback (Debian's postgresql package), for the multi-worker backend."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port, port_open, wait_for


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError("PostgreSQL is not installed: run scripts/test.sh, which installs the real peers")
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Postgres:
    folder: Path
    port: int = 0

    def start(self) -> Postgres:
        self.port = free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        subprocess.run(_as_postgres([_bin("initdb"), "-D", str(data), "-U", "dicomnode", "-A", "trust",
                                     "--no-sync"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", str(data), "-l", str(self.folder / "pg.log"), "-w",
                                     "-o", f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                                           f"-c unix_socket_directories={self.folder} -c fsync=off",
                                     "start"]), check=True, capture_output=True, timeout=120)
        wait_for(lambda: port_open(self.port), timeout=30, msg="PostgreSQL listening")
        return self

    def create_database(self, name: str) -> str:
        subprocess.run([_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "dicomnode", name],
                       check=True, capture_output=True, timeout=60)
        return f"postgresql+psycopg://dicomnode@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "stop"]),
                       capture_output=True, timeout=60, check=False)
