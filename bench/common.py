"""What every benchmark shares: the two size profiles, the edit prompts, timing statistics, result files,
and a real `mend serve` process on 127.0.0.1 with its embedded Redis in a folder of our choosing."""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from service.client import MendClient, MendError

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
ZSRE = Path(os.environ.get("BENCH_ZSRE_DIR", ROOT.parent / "shared" / "data" / "zsre"))


@dataclass(frozen=True)
class Profile:
    """Sizes of one run. `full` is what the issue asks for; `smoke` is tiny so CI can run every script."""

    name: str
    model: str  # MEND_MODEL: 'smollm2' or a folder
    editor: str  # MEND_EDITOR folder
    threads: int  # torch threads in the measuring process and in every server
    out: Path
    edit_batches: tuple[int, ...]
    edit_repeats: int  # timed repeats per batch size (MEND and the forward+backward floor)
    ft_repeats: int  # FT takes up to 25 steps an edit: fewer repeats
    log_lengths: tuple[int, ...]  # edits in the prepared logs: rollback and generation levels come from here
    levels: tuple[int, ...]  # edits in the log for the restart measurements (0 or a log length)
    new_tokens: int  # the servers' MEND_MAX_NEW_TOKENS
    rollbacks: int  # rollbacks timed per log length
    restart_repeats: int
    train_steps: int
    train_pool: int  # max_records: a small pool repeats sequences, which is when the prefix cache pays
    train_rank: int


def make_profile(smoke: bool, model: str | None = None, editor: str | None = None,
                 threads: int | None = None, out: Path | None = None) -> Profile:
    name = "smoke" if smoke else "full"
    out = (out or OUT / name).resolve()
    if smoke:
        if model is None:
            model, editor = (str(p) for p in tiny_model_and_editor(out / "tiny"))
        # Batches of 2 and 4, not 10 and 25: the 49k-token vocabulary makes even the tiny model's logits big.
        return Profile(name, model, editor or "", threads or 1, out, edit_batches=(1, 2, 4), edit_repeats=3,
                       ft_repeats=1, log_lengths=(3, 10, 30), levels=(0, 10, 30), new_tokens=8, rollbacks=3,
                       restart_repeats=1, train_steps=6, train_pool=8, train_rank=16)
    # Threads default to the 2 cores: below the core count, the server's request threads do not honour it
    # (see NOTES.md, "Torch threads in the server").
    return Profile(name, model or "smollm2", editor or str(ROOT / "weights" / "smollm2"), threads or 2, out,
                   edit_batches=(1, 10, 25), edit_repeats=20, ft_repeats=5, log_lengths=(10, 100, 1000),
                   levels=(0, 100, 1000), new_tokens=32, rollbacks=8, restart_repeats=3, train_steps=40, train_pool=20,
                   train_rank=256)


def tiny_model_and_editor(folder: Path) -> tuple[Path, Path]:
    """A random 6-block Llama with SmolLM2's real tokenizer, and an untrained editor for its last 3 MLPs.

    Six blocks, not three, so that a frozen prefix exists for the prefix-cache measurement. Built once.
    """
    model_dir, editor_dir = folder / "model", folder / "editor"
    if (editor_dir / "editor.json").exists():
        return model_dir, editor_dir
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from editor_core import MENDEditor, prepare_model
    from editor_core.model import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("smollm2"))
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    editor = MENDEditor.for_model(prepare_model(model), rank=8)
    editor.save(editor_dir)
    # A scope too, so that the service's default method (scoped) runs on it.
    from editor_core.scope import Scope, ScopeConfig
    generic = ["The weather today is", "My favourite food is", "The capital of France is", "Dogs like to"]
    Scope.fit(model, tok, editor.layers, generic, ScopeConfig(key_block=2, radius=0.9)).save(editor_dir)
    return model_dir, editor_dir


# ---- inputs --------------------------------------------------------------------------------------------------

def zsre_records(split: str) -> list[dict]:
    """The zsRE records of the repo's data folder, or [] where it is absent (then prompts are synthesized)."""
    path = ZSRE / f"{split}.json"
    return json.loads(path.read_text()) if path.exists() else []


def edit_pairs(n: int, offset: int = 0) -> list[dict]:
    """n {prompt, target} edits: zsRE questions (dev, then train) with their counterfactual answers."""
    recs = [r for r in zsre_records("dev") + zsre_records("train") if str(r.get("alt", "")).strip()]
    if not recs:
        cities = ["Rome", "Paris", "Madrid", "Oslo", "Lima", "Cairo", "Tokyo", "Quito"]
        return [{"prompt": f"Person number {offset + i} was born in the city of", "target": cities[i % len(cities)]}
                for i in range(n)]
    return [{"prompt": recs[(offset + i) % len(recs)]["src"], "target": recs[(offset + i) % len(recs)]["alt"]}
            for i in range(n)]


def generation_prompts(n: int) -> list[str]:
    """Prompts nobody edits (zsRE locality questions), the same list for every edit count."""
    recs = [r["loc"] for r in zsre_records("dev") if r.get("loc")]
    return recs[-n:] if recs else [f"Question {i}: what is the tallest mountain in the world?" for i in range(n)]


# ---- statistics and results ----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: p95 of 20 samples is the 19th, never an interpolation between two."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": statistics.median(ms), "p95": pct(ms, 95), "mean": statistics.fmean(ms),
            "max": max(ms)}


def machine(threads: int) -> dict[str, str | int]:
    cpu = next((l.split(":", 1)[1].strip() for l in _lscpu().splitlines() if l.startswith("Model name")), "")
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count() or 0, "torch_threads": threads,
            "python": platform.python_version(), "commit": _git("rev-parse", "--short", "HEAD"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def save(p: Profile, name: str, data: dict, command: str) -> Path:
    """One JSON per benchmark under the profile's folder; report.py turns them into RESULTS.md."""
    p.out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "command": command, "profile": {k: (str(v) if isinstance(v, Path) else v)
                                                              for k, v in asdict(p).items()},
           "machine": machine(p.threads), "results": data}
    path = p.out / f"{name}.json"
    part = path.with_suffix(".json.part")  # replaced whole: a run killed while writing keeps the last result
    part.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(part, path)
    log.info("wrote %s", path)
    return path


def command_line() -> str:
    return "python -m bench." + Path(sys.argv[0]).stem + " " + " ".join(sys.argv[1:])


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the results


# ---- a real server -------------------------------------------------------------------------------------------

@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    logfile: Path
    started: float  # perf_counter at Popen

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def replay_seconds(self) -> float | None:
        """The replay time the runtime itself logs ('replayed N events of KEY in X s')."""
        m = re.search(r"replayed \d+ events of \S+ in ([\d.]+) s", self.log_text())
        return float(m.group(1)) if m else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(p: Profile, data_dir: Path, logfile: Path, **settings: str) -> Server:
    """`mend serve` on 127.0.0.1 with the embedded Redis under data_dir; the environment decides nothing else
    (`settings`, e.g. MEND_CHECKPOINT_EVERY="0", are passed on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEND_") and k != "REDIS_URL"}
    env.update(MEND_MODEL=p.model, MEND_EDITOR=p.editor, MEND_DATA_DIR=str(data_dir), MEND_THREADS=str(p.threads),
               MEND_MAX_NEW_TOKENS=str(max(p.new_tokens, 1)))
    # The service benchmarks measure in-place edits unless BENCH_METHOD says otherwise (the logs they build are
    # per method: a server of the other method would see none of them).
    env["MEND_METHOD"] = os.environ.get("BENCH_METHOD", "inplace")
    if "BENCH_GUARD_CANARIES" in os.environ:  # e.g. 0: build the 1,000-edit logs without the canary check's cost
        env["MEND_GUARD_CANARIES"] = os.environ["BENCH_GUARD_CANARIES"]
    env.update(settings)
    port = free_port()
    mend = Path(sys.executable).parent / "mend"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("w") as fh:  # the child keeps its own descriptor
        started = time.perf_counter()
        proc = subprocess.Popen([str(mend), "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    return Server(proc, f"http://127.0.0.1:{port}", logfile, started)


def wait_ready(s: Server, timeout: float = 600.0) -> float:
    """Poll /ready until 200; returns seconds since the process was started."""
    deadline = time.monotonic() + timeout
    with MendClient(s.url, timeout=5.0, retries=0) as mend:  # this loop is the retry
        while time.monotonic() < deadline:
            if s.proc.poll() is not None:
                raise RuntimeError(f"server exited with {s.proc.returncode}:\n{s.log_text()[-3000:]}")
            try:
                if mend.ready().ready:
                    return time.perf_counter() - s.started
            except MendError:  # not listening yet, or starting
                pass
            time.sleep(0.02)  # 20 ms: the resolution of the restart measurement
    stop(s)
    raise TimeoutError(f"server not ready within {timeout:.0f} s:\n{s.log_text()[-3000:]}")


def stop(s: Server) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGINT)  # uvicorn's graceful path: lifespan closes the log and stops Redis
        try:
            s.proc.wait(60)
        except subprocess.TimeoutExpired:
            log.error("server %d ignored SIGINT; killing it", s.proc.pid)
            s.proc.kill()
            s.proc.wait()


@contextmanager
def serving(p: Profile, data_dir: Path, logfile: Path, **settings: str) -> Iterator[Server]:
    s = launch(p, data_dir, logfile, **settings)
    try:
        wait_ready(s)
        yield s
    finally:
        stop(s)


# ---- prepared edit logs --------------------------------------------------------------------------------------

def log_dir(p: Profile, n: int) -> Path:
    return p.out / "logs" / f"n{n}"


def fresh_copy(p: Profile, n: int, dest: Path) -> Path:
    """A copy of the prepared log with n edits (an empty folder for 0), so that a run never alters it."""
    if dest.exists():
        shutil.rmtree(dest)
    if n == 0:
        dest.mkdir(parents=True)
        return dest
    src = log_dir(p, n)
    if not (src / "done.json").exists():
        raise FileNotFoundError(f"no prepared log with {n} edits at {src}: run `python -m bench.populate"
                                f"{' --smoke' if p.name == 'smoke' else ''}` first")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("redis.pid", "redis.sock"))
    return dest
