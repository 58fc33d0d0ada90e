"""`import lineas_engine` needs only torch, numpy, POT and safetensors."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_imports_without_hosts():
    code = (
        "import sys\n"
        "for name in ('transformers', 'diffusers', 'comfy', 'folder_paths', 'comfy_api', 'matplotlib'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import lineas_engine\n"
        "from lineas_engine import Steering, SiteSpec, fit, save_steering, wasserstein_1d_sq\n"
        "import torch\n"
        "print(wasserstein_1d_sq(torch.zeros(3, 2), torch.ones(2, 2)).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 1.0]"


def test_engine_imports_as_a_subpackage_with_relative_imports():
    """ComfyUI imports the pack folder as a package under a mangled name; the engine must then load as
    `<pack>.lineas_engine` (relative imports only)."""
    code = (
        "import importlib, importlib.util, sys, types\n"
        f"pkg = types.ModuleType('some_x_path_x_pack'); pkg.__path__ = [{str(ROOT)!r}]\n"
        "sys.modules['some_x_path_x_pack'] = pkg\n"
        "eng = importlib.import_module('some_x_path_x_pack.lineas_engine')\n"
        "assert 'lineas_engine' not in sys.modules, 'engine imported itself by absolute name'\n"
        "print(eng.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().count(".") == 2
