"""MEND model editing as a library: no HTTP, no Redis."""
from .data import EditRecord, EditRequest, join, load_records
from .delta import LowRankDelta, NonFiniteDeltaError, restore, snapshot
from .layers import EditedLayer, select_layers
from .mend import MENDConfig, MENDEditor
from .model import DEFAULT_MODEL, load_base_model, model_fingerprint, prepare_model
from .scoring import TargetScore, score_targets

__all__ = [
    "DEFAULT_MODEL", "EditRecord", "EditRequest", "EditedLayer", "LowRankDelta", "MENDConfig", "MENDEditor",
    "NonFiniteDeltaError", "TargetScore", "join", "load_base_model", "load_records", "model_fingerprint",
    "prepare_model", "restore", "score_targets", "select_layers", "snapshot",
]
