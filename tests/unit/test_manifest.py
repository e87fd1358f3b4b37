from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import Manifest, scan
from tests.support.peers import REPO

SHA = "0" * 64


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.toml"
    path.write_text(text)
    return path


def readme_examples() -> list[str]:
    text = (REPO / "models" / "README.md").read_text()
    return [block.replace("<64 hex digits: sha256sum model.onnx>", SHA).replace("<64 hex digits>", SHA)
            for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S)]


def test_the_readme_has_a_worked_example_per_task_and_each_is_valid(tmp_path: Path) -> None:
    examples = readme_examples()
    manifests = [Manifest.read(write(tmp_path / str(i), text)) for i, text in enumerate(examples)]
    assert {m.task for m in manifests} == {"segmentation", "classification"}


def test_deepbet_is_a_version_2_manifest() -> None:
    manifest = Manifest.read(REPO / "models" / "deepbet" / "manifest.toml")
    assert (manifest.task, manifest.backend, manifest.input.dimensions) == ("segmentation", "deepbet", 3)
    assert manifest.default.model == "deepbet" and manifest.min_slices == 32


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: "colour_space = 1\n" + t, "model liver-unet: manifest .* is invalid: unknown key 'colour_space'"),
    (lambda t: t.replace("[input.tiling]", "[input.tiling]\nstep = 3"), "unknown key 'input.tiling.step'"),
    (lambda t: t.replace('task = "segmentation"\n', ""), "missing key 'task'"),
    (lambda t: t.replace("manifest_version = 2", "manifest_version = 1"), "manifest_version = 2 is required"),
    (lambda t: t.replace("number = 1", "number = 2"), "numbers must be 1, 2, ... n"),
    (lambda t: t.replace("spacing = [1.5, 1.5, 2.0]", "spacing = [1.5, 2.0]"), "input.spacing needs 3"),
    (lambda t: t.replace(f'"{SHA}"', '"abc"'), r"key 'files\.0\.sha256'"),
    (lambda t: t.replace("[output]", "[output]\nmin_component_mm3 = -1.0"), "key 'output.min_component_mm3'"),
    (lambda t: t.replace("[output]", "[output.finding]\nlabel = 2\nname = 'Liver present'\n"
                         "code = { scheme = 'SCT', value = '10200004', meaning = 'Liver' }\n[output]"),
     "output.finding.label 2 is not one of output.labels"),
    (lambda t: t.replace("[output]", "[output.finding]\nlabel = 1\nname = 'x'\ncolour = 1\n"
                         "code = { scheme = 'SCT', value = '10200004', meaning = 'Liver' }\n[output]"),
     "unknown key 'output.finding.colour'"),
])
def test_bad_manifests_name_the_model_and_the_key(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    segmenter = next(t for t in readme_examples() if 'task = "segmentation"' in t)
    with pytest.raises(ModelError, match=message):
        Manifest.read(write(tmp_path / "liver-unet", edit(segmenter)))


def test_scan_keeps_the_good_manifests_and_says_why_for_the_others(tmp_path: Path) -> None:
    good, bad = readme_examples()[1], "manifest_version = 2\nid = 'x'\nnonsense = 1\n"
    write(tmp_path / "good", good)
    write(tmp_path / "bad", bad)
    write(tmp_path / "broken", "this is = = not toml")
    manifests, errors = scan(tmp_path)
    assert list(manifests) == [tomllib.loads(good)["id"]]
    assert set(errors) == {"bad", "broken"}
    assert errors["bad"].startswith("model x: ") and "cannot be read" in errors["broken"]
