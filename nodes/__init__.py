"""ComfyUI nodes of the LinEAS pack (V3 schema). Importing this module needs ComfyUI; the repo's
top-level __init__.py imports it only from ComfyUI's entry point."""

from . import api  # noqa: F401  (the pack's Python surface for tools, nodes/api.py)
from .apply import LineasApply
from .combine import LineasCombine
from .inspect_node import LineasInspect
from .io_nodes import LineasLoad, LineasSave
from .lora_node import LineasSaveLora
from .train import LineasTrainStyle

NODES = [LineasTrainStyle, LineasApply, LineasLoad, LineasSave, LineasCombine, LineasInspect, LineasSaveLora]

__all__ = ["NODES"] + [n.__name__ for n in NODES]
