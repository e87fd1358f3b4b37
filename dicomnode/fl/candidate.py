"""Candidate models from federated rounds, the promotion gate, and promotion to a new model version.

A candidate becomes the model's new version only through :func:`promote`, and only when it passed the
gate: in the last round, at every site, its Dice on the site's local evaluation set was at least that of
the model the site runs now. Promotion copies its ONNX file into the model folder and bumps the
manifest's ``version`` (minor) and the file's ``sha256``; until then ``dicomnode models list`` shows it
as a candidate.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.errors import ModelError
from dicomnode.fl.network import export_network, network

NOTICE = "research demonstration model trained on synthetic phantoms; not for clinical use"


@dataclass(frozen=True)
class Candidate:
    folder: Path
    model: str
    base_version: str
    passes_gate: bool
    rounds: list[dict[str, Any]]
    onnx_sha256: str

    @property
    def name(self) -> str:
        return self.folder.name


def passes_gate(rounds: list[dict[str, Any]], sites: int) -> bool:
    """At least as good as the current model at each of ``sites`` sites, in the last round."""
    if not rounds:
        return False
    last = rounds[-1]["sites"]
    return len(last) >= sites and all(s["dice_candidate"] >= s["dice_current"] for s in last.values())


def _manifest_field(text: str, key: str) -> str:
    match = re.search(rf'^{key} = "([^"]*)"', text, re.MULTILINE)
    if match is None:
        raise ModelError(f"the manifest has no {key}")
    return match.group(1)


def write_candidate(model_dir: Path, weights: list[np.ndarray], rounds: list[dict[str, Any]], sites: int
                    ) -> Candidate:
    """Export ``weights`` to ONNX under ``model_dir/candidates/<name>/`` with ``candidate.json``."""
    import torch

    manifest = (model_dir / "manifest.toml").read_text()
    model_id, version = _manifest_field(manifest, "id"), _manifest_field(manifest, "version")
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest()
    folder = model_dir / "candidates" / f"fl-{version}-r{len(rounds)}-{digest[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "weights.npz", *weights)
    net = network()
    state = net.state_dict()
    net.load_state_dict({k: torch.from_numpy(np.asarray(w)).to(state[k].dtype)
                         for k, w in zip(state, weights, strict=True)})
    export_network(net, folder / "model.onnx")
    candidate = Candidate(folder, model_id, version, passes_gate(rounds, sites), rounds,
                          hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest())
    (folder / "candidate.json").write_text(json.dumps({
        "model": model_id, "base_version": version, "notice": NOTICE, "sites": sites,
        "passes_gate": candidate.passes_gate, "onnx_sha256": candidate.onnx_sha256, "rounds": rounds,
        "aggregation": "FedAvg (flwr 1.42.0, legacy gRPC start_server)"}, indent=2))
    return candidate


def read_candidate(folder: Path) -> Candidate:
    data = json.loads((folder / "candidate.json").read_text())
    return Candidate(folder, str(data["model"]), str(data["base_version"]), bool(data["passes_gate"]),
                     list(data["rounds"]), str(data["onnx_sha256"]))


def candidates(models_dir: Path) -> list[Candidate]:
    """Every candidate under ``models_dir/*/candidates/``, promoted or not."""
    return [read_candidate(p.parent) for p in sorted(models_dir.glob("*/candidates/*/candidate.json"))]


def bump(version: str) -> str:
    """The next minor version: 1.0.0 -> 1.1.0, 2.1 -> 2.2."""
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ModelError(f"version {version!r} is not numeric (major.minor[.patch])")
    parts[1] = str(int(parts[1]) + 1)
    return ".".join(parts[:2] + ["0"] * (len(parts) - 2))


def promote(candidate: Candidate) -> str:
    """Make ``candidate`` its model's new version; returns that version.

    Raises
    ------
    ModelError
        When the candidate did not pass the gate, or the model moved on since it was trained.
    """
    if not candidate.passes_gate:
        raise ModelError(f"candidate {candidate.name} did not pass the gate: it is worse than the current "
                         "model at one site or more")
    model_dir = candidate.folder.parent.parent
    manifest_path = model_dir / "manifest.toml"
    text = manifest_path.read_text()
    current = _manifest_field(text, "version")
    if current != candidate.base_version:
        raise ModelError(f"candidate {candidate.name} was trained against version {candidate.base_version}, "
                         f"the model is now {current}")
    old_sha = hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()
    new_version = bump(current)
    (model_dir / "model.onnx").write_bytes((candidate.folder / "model.onnx").read_bytes())
    text = re.sub(r'^version = "[^"]*"', f'version = "{new_version}"', text, count=1, flags=re.MULTILINE)
    manifest_path.write_text(text.replace(old_sha, candidate.onnx_sha256))
    return new_version
