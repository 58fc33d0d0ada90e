"""A real ComfyUI (at $COMFYUI_PATH, default ~/ComfyUI) run in-process for the node tests and benchmarks, with this
repo loaded as a custom node pack from an extra custom_nodes folder (through extra_model_paths.yaml,
as a user would), and a headless HTTP server for the end-to-end test."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lineas_engine import cache_root

REPO = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("COMFYUI_PATH") or Path.home() / "ComfyUI").expanduser()
CACHE = cache_root() / "comfy-fixtures"
PACK_NAME = "comfyui-lineas"
CKPT = "tiny_sd15.safetensors"


def comfy_version() -> str:
    """The ComfyUI tree's version (comfyui_version.py), or "unknown"."""
    f = COMFY / "comfyui_version.py"
    text = f.read_text() if f.is_file() else ""
    found = [line.split("=", 1)[1].strip().strip("\"'") for line in text.splitlines() if line.startswith("__version__")]
    return found[0] if found else "unknown"


def families_dir() -> Path:
    """Where the family builds of this ComfyUI tree are cached: one folder per version (key names change
    between trees, e.g. Flux's QK norms are ``.scale`` in v0.3.64 and ``.weight`` in 0.33)."""
    return CACHE / f"families-{comfy_version()}"


def comfy_available() -> tuple[bool, str]:
    if not (COMFY / "main.py").is_file() or not (COMFY / "comfy").is_dir():
        return False, f"ComfyUI not found at {COMFY} (set COMFYUI_PATH; see README)"
    return True, ""


def make_base_dir(base: Path) -> Path:
    """ComfyUI base directory with the tiny checkpoint, our pack in an extra custom_nodes folder, and the
    yaml that points ComfyUI at them."""
    for sub in ("models/checkpoints", "models/lineas", "input", "output", "user", "temp", "custom_nodes",
                "extra_nodes"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "extra_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"lineas_tests:\n  base_path: {base}\n  checkpoints: models/checkpoints\n"
                    f"  lineas: models/lineas\n  custom_nodes: {base / 'extra_nodes'}\n")
    return yaml


def import_comfy(base: Path | None = None, cpu: bool = True) -> None:
    """Make the installed ComfyUI importable in this process, on the CPU: call before anything imports
    comfy.model_management (which, with a CUDA torch build and no GPU, fails unless ``args.cpu`` is already
    set); with ``base``, also before anything imports folder_paths (it reads ``args.base_directory``)."""
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = cpu
    args.fp32_text_enc = True
    if base is not None:
        args.base_directory = str(base)
        args.output_directory = str(base / "output")
        args.input_directory = str(base / "input")


class InProcessComfy:
    """ComfyUI's own executor (execution.PromptExecutor, with this object as its "server"), in this process,
    no HTTP. ``tiny_checkpoint=False`` skips building the tests' random checkpoint (callers then link their
    own into ``base/models/checkpoints``)."""

    def __init__(self, base: Path, tiny_checkpoint: bool = True, cpu: bool = True):
        self.base = base
        yaml = make_base_dir(base)
        import_comfy(base, cpu=cpu)
        import folder_paths

        folder_paths.set_output_directory(str(base / "output"))
        folder_paths.set_input_directory(str(base / "input"))
        folder_paths.set_temp_directory(str(base / "temp"))
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(str(yaml))
        if tiny_checkpoint:
            from devtools.tiny_checkpoint import ensure_checkpoint

            ckpt = ensure_checkpoint(CACHE / CKPT)
            target = base / "models" / "checkpoints" / CKPT
            if not target.exists():
                target.symlink_to(ckpt)
        import execution

        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.nodes, self.execution = nodes, execution
        self.events: list = []
        self.executor = execution.PromptExecutor(self, **executor_options(execution))
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}

    # the "server" interface PromptExecutor talks to
    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    def run(self, prompt: dict) -> dict:
        """Validate and execute an API-format prompt; returns history outputs, raises on failure."""
        pid = str(uuid.uuid4())
        valid, err, outputs, node_errors = asyncio.run(self.execution.validate_prompt(pid, prompt, None))
        if not valid:
            raise PromptError(f"invalid prompt: {err} {node_errors}")
        self.executor.execute(prompt, pid, extra_data={}, execute_outputs=outputs)
        if not self.executor.success:
            msgs = [d for e, d in self.executor.status_messages if e == "execution_error"]
            raise PromptError(msgs[0]["exception_message"] if msgs else str(self.executor.status_messages))
        return self.executor.history_result["outputs"]

    def free(self):
        import comfy.model_management as mm

        self.executor.reset()
        mm.unload_all_models()


def executor_options(execution) -> dict:
    """PromptExecutor's keyword arguments for a classic cache on this ComfyUI: newer trees (0.33) also take
    ``cache_args`` (and read ``cache_args["ram"]`` whatever the cache type)."""
    import inspect

    opts = {"cache_type": execution.CacheType.CLASSIC}
    if "cache_args" in inspect.signature(execution.PromptExecutor.__init__).parameters:
        opts["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return opts


def node_class(nodes, node_id: str, unique_id: str):
    """The executor's per-run clone of a V3 node class with its hidden ``unique_id``, on either API:
    ``PREPARE_CLASS_CLONE(hidden_inputs)`` (v0.3.x) or ``PREPARE_CLASS_CLONE({"hidden_inputs": ...})`` (0.33)."""
    import inspect

    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    hidden = {"unique_id": unique_id}
    params = list(inspect.signature(cls.PREPARE_CLASS_CLONE).parameters)
    return cls.PREPARE_CLASS_CLONE(hidden if params and params[0] == "hidden_inputs" else {"hidden_inputs": hidden})


class PromptError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py` headless on 127.0.0.1 (its own pid only is stopped)."""

    def __init__(self, base: Path, python: str = sys.executable):
        self.base = base
        yaml = make_base_dir(base)
        from devtools.tiny_checkpoint import ensure_checkpoint

        target = base / "models" / "checkpoints" / CKPT
        if not target.exists():
            target.symlink_to(ensure_checkpoint(CACHE / CKPT))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(base / "server.log", "w")
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
             "--base-directory", str(base), "--database-url", f"sqlite:///{base}/user/comfyui.db",
             "--extra-model-paths-config", str(yaml), "--fp32-text-enc", "--disable-api-nodes"],
            cwd=COMFY, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        import urllib.request

        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {(self.base / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/object_info/LineasApply", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("ComfyUI server did not start")

    def get(self, path: str):
        import json
        import urllib.request

        return json.loads(urllib.request.urlopen(self.url + path, timeout=30).read())

    def post(self, path: str, payload: dict):
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            return json.loads(urllib.request.urlopen(req, timeout=30).read() or b"{}")
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, "body": json.loads(e.read() or b"{}")}

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        res = self.post("/prompt", {"prompt": prompt, "client_id": "lineas-tests"})
        if "prompt_id" not in res:
            raise PromptError(str(res))
        pid = res["prompt_id"]
        end = time.time() + timeout
        while time.time() < end:
            hist = self.get(f"/history/{pid}")
            if pid in hist:
                status = hist[pid].get("status", {})
                if status.get("status_str") == "error":
                    raise PromptError(str(status.get("messages"))[-1500:])
                if status.get("completed"):
                    return hist[pid]["outputs"]
            time.sleep(0.5)
        raise TimeoutError("prompt did not finish")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def require_comfy() -> None:
    """Make ``comfy.*`` importable (CPU, no argument parsing) or raise with the reason it is not."""
    ok, why = comfy_available()
    if not ok:
        raise RuntimeError(why)
    import_comfy()


def init_default_(module) -> None:
    """ComfyUI's ops skip weight init (they expect a checkpoint): give every conv / linear / norm torch's
    default initialisation, from torch's global generator (seed it first)."""
    import torch.nn as nn

    for m in module.modules():
        for base in (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break
