"""MEND model editing as a library: no HTTP, no Redis. What is named here is the public API (the service uses
nothing else)."""
from .batching import Batch, Row, complete
from .canary import Canary, CanarySet, Change, load_canaries, shadow_of
from .data import EditRecord, EditRequest, join, load_records
from .delta import LowRankDelta, NonFiniteDeltaError, WeightsView, restore, safetensors_metadata, snapshot
from .export import merged, to_peft
from .generation import Completion, prompt_ids
from .layers import EditedLayer, first_block, select_layers
from .mend import MENDConfig, MENDEditor
from .model import DEFAULT_MODEL, DTYPES, load_base_model, model_fingerprint, prepare_model
from .prefix_cache import PrefixCache
from .scope import (
                    CHAT,
                    DIGEST,
                    PLAIN,
                    THREADS,
                    Ask,
                    Codebook,
                    IndexConfig,
                    Scope,
                    ScopedMeta,
                    Worded,
                    codebook_from_state,
                    codebook_state,
                    factors_digest,
)
from .scoring import TargetScore, score_targets

__all__ = [
    "CHAT", "DEFAULT_MODEL", "DIGEST", "DTYPES", "PLAIN", "THREADS", "Ask", "Batch", "Canary", "CanarySet", "Change",
    "Codebook", "Completion", "EditRecord", "EditRequest", "EditedLayer", "IndexConfig", "LowRankDelta", "MENDConfig",
    "MENDEditor", "NonFiniteDeltaError", "PrefixCache", "Row", "Scope", "ScopedMeta", "TargetScore", "WeightsView",
    "Worded", "codebook_from_state", "codebook_state", "complete", "factors_digest", "first_block", "join",
    "load_base_model", "load_canaries", "load_records", "merged", "model_fingerprint", "prepare_model", "prompt_ids",
    "restore", "safetensors_metadata", "score_targets", "select_layers", "shadow_of", "snapshot", "to_peft",
]
