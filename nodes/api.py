"""The pack's Python surface for benchmarks and tools (bench/comfy_bench.py, devtools/comfy_families.py): the
pieces the nodes are built from, under stable names. Everything else in nodes/_*.py is private."""

from ._conditioning import run_in_sampling
from ._families import inputs_copied, is_qk_norm, probe_widths
from ._memory import (
    add_checkpointing,
    checkpoint_units,
    choose_micro_batch,
    trainable_weights,
    training_bytes_per_sample,
)
from ._patcher import apply_steering_report, architecture_of
from ._training import StyleTrainingOptions, choose_sites, train_style

__all__ = ["run_in_sampling", "inputs_copied", "is_qk_norm", "probe_widths", "add_checkpointing",
           "checkpoint_units", "choose_micro_batch", "trainable_weights", "training_bytes_per_sample",
           "apply_steering_report", "architecture_of", "choose_sites", "train_style", "StyleTrainingOptions"]
