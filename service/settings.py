"""Process settings: one object, read from the environment (names in the README's settings table)."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CANARIES = Path(__file__).with_name("canaries.json")  # default 600 NQ/CounterFact train prompts


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEND_", extra="ignore")

    model: str = Field("smollm2", description="base model: 'smollm2' (bundled default) or a local HF folder")
    editor: Path = Field(Path("weights/smollm2"), description="folder with editor.safetensors + editor.json")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="external Redis; unset = start an embedded redis-server under data_dir",
    )
    data_dir: Path = Field(Path("data"), description="embedded Redis data (append-only file)")
    device: str = Field("cpu", description="where the whole model goes; with MEND_DEVICE_MAP, leave it unset")
    dtype: str = "float32"
    # Passed to from_pretrained(device_map=...): accelerate places the blocks, across GPUs for a model no one device
    # holds, and moves activations between them; inputs go where the first module is.
    device_map: str | dict[str, int | str] | None = Field(None, description=(
        "'auto', 'balanced', 'balanced_low_0', 'sequential' or a JSON object {module: device}; unset = one device "
        "(MEND_DEVICE)"))
    max_memory: dict[str, int | str] | None = Field(None, description="with MEND_DEVICE_MAP: JSON object "
                                                                      "{device: size}, e.g. {\"0\": \"70GiB\", "
                                                                      "\"cpu\": \"100GiB\"}")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; unset = torch's default")
    api_key: SecretStr | None = Field(None, description="when set, every route but /health and /ready needs "
                                                        "'Authorization: Bearer <key>'")
    metrics_public: bool = Field(False, description="with a key set, let /metrics answer without it (a scraper)")
    allow_no_key: bool = Field(False, description="serve on a non-loopback host without an API key")
    max_prompt_tokens: int = Field(1024, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    # One decode thread batches concurrent generations (service/batcher.py): more rows, more tokens/s in all but
    # a slower step for each row; bench/generate_throughput.py measures both.
    max_batch: int = Field(16, ge=1, description="most generations decoded together in one batch")
    # Each logged delta is re-factored to its numerical rank (singular values below rel_tol·σ_max dropped) and
    # stored in this dtype: a fifth of the bytes, and no measured change in what the edit does. The compressed
    # delta is the one checked, logged and applied.
    delta_rel_tol: float = Field(0.03, ge=0, lt=1, description="singular values kept: >= rel_tol * the largest")
    delta_dtype: str = Field("float16", pattern="^(float32|float16|bfloat16)$", description="stored factor dtype")
    # A scoped edit is logged as its definition; its factors are held here, least recently used first, and
    # recomputed from the definition (one edit's time) when a request selects an edit that is not held.
    piece_cache_mb: int = Field(1024, ge=0, description="scoped edits: MiB of edits' factors held in memory "
                                                        "(0 = no bound); an edit not held is recomputed when selected")
    # Below this many key rows selection scans them all; from it on, an HNSW graph (faiss) gives each request its
    # candidates and the scan's rules choose among them (editor_core/scope/index.py).
    index_min_rows: int = Field(20_000, ge=1, description="scoped edits: key rows from which selection uses an "
                                                          "approximate index (HNSW) for its candidates")
    index_ef_search: int = Field(256, ge=16, le=4096, description="scoped edits: how many candidates the index's "
                                                                  "search keeps (higher: closer to the exact scan)")
    # glibc's malloc otherwise raises its mmap threshold as large blocks are freed, and the heap then grows by
    # about 5 MiB per edit on SmolLM2 (service/heap.py).
    mmap_threshold: int = Field(128 * 1024, ge=0, le=32 * 1024 * 1024,
                                description="bytes from which malloc serves a block by mmap, fixed (glibc; 0: "
                                            "glibc's default, raised as blocks are freed)")
    canaries: Path = Field(DEFAULT_CANARIES, description="edit guard canaries: JSON list of prompts or "
                                                          "{prompt, answer}; default 600 NQ/CounterFact train prompts")
    guard_canaries: int = Field(100, ge=0, description="how many of them the guard checks (0 = no canary check)")
    # Measured on SmolLM2 with the trained editor (100 canaries, 4-token greedy answers, teacher-forced): 40
    # ordinary dev edits changed 9-46% of them (median 31%); the same edits at 3x the learned step a median of
    # 59%, at 10x 82-99%. 0.6 passes every ordinary edit seen and refuses the overdriven ones.
    guard_max_changed: float = Field(0.6, ge=0.0, le=1.0, description="largest share of canary answers an "
                                                                        "edit may change without force")
    # Restart cost is model load + restoring this checkpoint + re-applying the events after it. A full replay of
    # 1,000 SmolLM2 edits took 54 s on the shared 2-core CPU (~53 ms an event: bench/RESULTS.md), so at most 49
    # events stay within the 3 s goal; a checkpoint is one SET of 32 MB (SmolLM2's nine matrices) every 50 edits.
    checkpoint_every: int = Field(50, ge=0, description="store the exact edited weights in Redis every N log "
                                                         "events, so a restart re-applies at most N (0 = no "
                                                         "checkpoints: every restart replays the whole log)")
    # Default scoped: kept edits do not interfere, where in-place MEND collapses after a few dozen.
    # A restart reads the newest snapshot of the derived state (under MEND_DATA_DIR) and replays only the events
    # after it; one is written on shutdown and every N events.
    snapshot_every: int = Field(10_000, ge=0, description="scoped edits: write a snapshot of the served state "
                                                            "every N log events and on shutdown (0 = never)")
    method: str = Field("scoped", pattern="^(inplace|scoped)$", description=(
        "inplace: each delta is added to the weights (MEND as published); scoped: each delta applies only to "
        "prompts within the scope radius of the edit's own (editor_core.scope), weights never change"))
    # Another wording selects its edit far more often than the edit's own piece makes it answer.
    reword: bool = Field(True, description="scoped edits: a request that selects an edit in other words than the "
                                           "edit's own gets the edit computed for its wording (one edit's time, "
                                           "once per wording), rather than the piece made for the edit prompt")
    guard_max_captured: float = Field(0.05, ge=0.0, le=1.0, description="scoped edits: largest share of canary "
                                                                         "prompts an edit's scope may cover")
    turn_wait_s: float = Field(30.0, ge=0, description="replicas sharing a log edit in turns, first come first served; "
                                                       "how long an edit waits for its turn before it computes "
                                                       "without it (0 = no turns: race, and retry on conflict)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("api_key", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        # docker-compose passes `MEND_API_KEY: ${MEND_API_KEY:-}` as an empty string: that means "no key".
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("device_map", mode="before")
    @classmethod
    def _device_map(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        v = v.strip()
        if v in DEVICE_MAP_NAMES:
            return v
        if not v.startswith("{"):
            raise ValueError(f"MEND_DEVICE_MAP must be one of {', '.join(DEVICE_MAP_NAMES)} or a JSON object "
                             f"{{module: device}}, got {v!r}")
        return _json_setting("MEND_DEVICE_MAP", v)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _max_memory(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        return _json_setting("MEND_MAX_MEMORY", v)

    @field_validator("device_map", mode="after")
    @classmethod
    def _map_devices(cls, v: object) -> object:
        for module, device in (v.items() if isinstance(v, dict) else ()):
            if device == "disk" or (isinstance(device, int) and device >= 0):
                continue  # accelerate's names for offloaded to files and for a GPU by index
            import torch  # only a device map's names need torch's judgement: reading settings must not load it

            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"MEND_DEVICE_MAP puts {module!r} on {device!r}, which is not a device "
                                 f"(a GPU index, 'cuda:N', 'cpu', 'disk', ...)") from None
        return v

    @model_validator(mode="after")
    def _one_placement(self) -> Settings:
        if self.device_map is not None and "device" in self.model_fields_set:
            raise PydanticCustomError("device_and_map", (
                "MEND_DEVICE and MEND_DEVICE_MAP both set: with a device map the map places the model; unset "
                "MEND_DEVICE"), {})
        if self.max_memory is not None and self.device_map is None:
            raise PydanticCustomError("max_memory_without_map", (
                "MEND_MAX_MEMORY only bounds what a device map places: set MEND_DEVICE_MAP (e.g. auto) too"), {})
        return self

    @model_validator(mode="after")
    def _no_open_writes(self) -> Settings:
        # Without a key anyone who reaches the port can edit the model and read every prompt in the audit log.
        if self.api_key is None and not self.allow_no_key and not is_loopback(self.host):
            raise PydanticCustomError("no_api_key", (
                "refusing to serve on {host} without an API key: anyone who can reach it could edit the model. "
                "Set MEND_API_KEY, bind a loopback address (MEND_HOST or --host 127.0.0.1), or set "
                "MEND_ALLOW_NO_KEY=true if something else keeps the port private"), {"host": self.host})
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _json_setting(name: str, v: str) -> object:
    try:
        return json.loads(v)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON ({e}): {v!r}") from None
