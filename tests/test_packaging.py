"""The node pack is registry-ready: the Comfy Registry's required pyproject fields, a LICENSE file, an
icon, requires-comfyui, classifiers the registry parses, and a node archive (tracked files minus
.comfyignore, as `comfy node pack` builds it) that carries the pack and not the developers' files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def archive_files() -> list[str]:
    """Files of the node archive: the repository's tracked files (git ls-files; every file when this is
    not a git checkout) minus the .comfyignore patterns (gitignore syntax)."""
    import pathspec

    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        files = [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    spec = pathspec.GitIgnoreSpec.from_lines((REPO / ".comfyignore").read_text().splitlines())
    return sorted(f for f in files if not spec.match_file(f))


def test_registry_fields(pyproject):
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    assert project["name"] and project["version"] and project["description"]
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert project["license"] in ({"file": "LICENSE"}, {"text": "MIT"})
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]
    assert any(c.startswith("Operating System :: ") for c in project["classifiers"])
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"].startswith(">=")
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("web/icon.png")
    assert "torch" not in " ".join(project["dependencies"])  # never replace the user's CUDA torch


def test_license_and_icon_files():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    from PIL import Image

    with Image.open(REPO / "web" / "icon.png") as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] and im.size[0] <= 400  # the registry's icon size


def test_node_archive_has_the_pack_and_not_the_developer_files():
    files = archive_files()
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "web/icon.png",
                   "nodes/train.py", "nodes/_lora.py", "lineas_engine/__init__.py",
                   "workflows/lineas_train_style.json", "workflows/lineas_train_style.jpg",
                   "web/docs/LineasTrainStyle.md"):
        assert needed in files, needed
    for f in files:
        assert not f.startswith(("bench/", "devtools/", "tests/", "docs/results/", "docs/templates/", ".ci/",
                                 "scripts/")), f
    size = sum((REPO / f).stat().st_size for f in files)
    assert size < 2_000_000, f"node archive would be {size / 1e6:.1f} MB"


def test_comfyui_reads_the_pack_config(pyproject):
    """ComfyUI's own parser of a pack's pyproject (comfy_config, kept in sync with the registry's types)."""
    from devtools.comfy_runtime import COMFY, comfy_available

    ok, why = comfy_available()
    if not ok:
        pytest.skip(why)
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    from comfy_config import config_parser

    cfg = config_parser.extract_node_configuration(str(REPO))
    assert cfg.project.name == pyproject["project"]["name"]
    assert cfg.project.urls.repository == pyproject["project"]["urls"]["Repository"]
    assert cfg.project.supported_comfyui_version == ">=0.3.64"
    assert cfg.project.supported_os == ["OS Independent"]
    assert cfg.project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert cfg.tool_comfy.icon == pyproject["tool"]["comfy"]["Icon"]
    assert cfg.project.license.text == "MIT"
