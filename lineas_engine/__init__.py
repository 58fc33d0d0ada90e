"""lineas_engine: LinEAS activation steering for any torch model.

Per-site, per-channel affine maps h -> w * h + b on chosen modules, trained end to end with a
per-coordinate 1-D optimal transport loss between pooled source and target activations, optionally
sparse (proximal sparse group lasso). Imports only torch, numpy, POT and safetensors.
"""

from .atomic import atomic_write_bytes, write_numbered
from .compat import check_compatible, model_fingerprint
from .config import MAPS, Forward, OnStep, Regularizer, TrainConfig, TrainResult
from .errors import (
    IncompatibleSteeringError,
    LineasError,
    NoMatchingSiteError,
    NonFiniteLossError,
    NonFiniteMapError,
    SiteOutputError,
    SteeringFileError,
)
from .files import FORMAT_VERSION, SteeringMeta, load_steering, save_steering
from .fold import FoldReport, fold_, folded_parameters
from .hooks import (
    Recorder,
    SteeringHandle,
    StopForward,
    attach,
    context_pass,
    is_context_pass,
    is_recomputing,
    recomputing,
    run_until_sites,
    steered,
)
from .layerwise import affine_ot_fit, fit_layerwise
from .loop import fit
from .losses import ot_loss, wasserstein_1d_sq
from .methods import METHODS, Method, get_method, register_method, train
from .optim import cosine_schedule, make_optimizer, prox_sparse_group_lasso_, soft_threshold
from .paths import cache_root
from .pooling import pool
from .record import SteeringRecord, load_record, record_bytes, save_record
from .recording import evaluate_loss, forward_recorded, frozen, grouped_loss, record_activations
from .rescue import save_or_rescue
from .samples import minibatches, num_samples, sample_groups, slice_samples
from .sites import PRESETS, SiteSpec, find_sites, is_norm, register_preset, site_specs
from .steering import Steering, site_key

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "LineasError", "NoMatchingSiteError", "SiteOutputError", "SteeringFileError", "IncompatibleSteeringError",
    "NonFiniteLossError", "NonFiniteMapError",
    "SiteSpec", "PRESETS", "register_preset", "is_norm", "find_sites", "site_specs",
    "Steering", "site_key",
    "attach", "steered", "Recorder", "SteeringHandle", "StopForward", "run_until_sites", "recomputing",
    "is_recomputing", "context_pass", "is_context_pass",
    "pool", "wasserstein_1d_sq", "ot_loss",
    "make_optimizer", "cosine_schedule", "prox_sparse_group_lasso_", "soft_threshold",
    "TrainConfig", "TrainResult", "Forward", "OnStep", "Regularizer", "MAPS",
    "train", "register_method", "get_method", "Method", "METHODS",
    "fit", "record_activations", "forward_recorded", "evaluate_loss", "grouped_loss", "frozen",
    "num_samples", "slice_samples", "sample_groups", "minibatches",
    "affine_ot_fit", "fit_layerwise",
    "FoldReport", "folded_parameters", "fold_",
    "FORMAT_VERSION", "SteeringMeta", "save_steering", "load_steering", "model_fingerprint",
    "check_compatible", "atomic_write_bytes", "write_numbered",
    "SteeringRecord", "save_record", "record_bytes", "load_record", "save_or_rescue", "cache_root",
]
