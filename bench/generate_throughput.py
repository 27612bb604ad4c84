"""Issue 15: generation through the service (continuous batching) against plain Hugging Face `model.generate`, side
by side in one run.

    python -m bench.generate_throughput                  # SmolLM2, 1,000-edit logs, 1/4/8/16 clients
    python -m bench.generate_throughput --smoke          # the tiny random model, tiny counts (tests/bench)
    python -m bench.generate_throughput --dtype bfloat16 # the same, served and generated in bfloat16

Three `mend serve` processes run at once, each idle while another is measured: no edits (the default, scoped), 1,000
scoped edits and 1,000 in-place edits. Their logs are built once, through /edit in batches of 25 (a scoped batch is
25 edits with a key each: 1,000 keys in the codebook), and copied for every run. Every request streams (/generate,
stream: true) with temperature 0.7 and max_new_tokens 32: time to first token is the first event with text, and
tokens/s counts the completion tokens of the requests that run inside a measuring window (after a ramp-up: every
client has a request in flight), client by client over the time they took (`per_client_rate`). Plain
`model.generate` runs in this process at batch 1 and 8 on the same prompts and settings (top_k off, so both sample
from the whole distribution at temperature 0.7), its first token timed by a streamer and its tokens counted up to
each row's end of sequence. Configurations are interleaved round by round with their order rotated, so a slow
minute on this shared CPU does not land on one only.

Three sets of prompts, none of them edited unless said:
- "facts": "Some facts about <answer>:" for zsRE locality answers (10 tokens on average). The model writes on,
  so every completion runs the 32 tokens the issue measured with; every configuration and client count uses
  them, and the issue's ratios are computed on them. The scoped servers pay for keying and searching 1,000 keys,
  not answers.
- "questions": zsRE locality questions (15 tokens; replies of about 15, ending on their own): the
  prompt's prefill, a cost per request, then weighs twice as much per token as with "facts".
- "edited": the logged edits' own questions, to the no-edit and the scoped server: each selected edit acts on its
  row until the answer is said, and the row is prefilled again without it.

Last, edits are timed on the no-edit (scoped) and the in-place server, idle and while 8 clients generate.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import httpx
import typer

from .common import (
    Profile,
    Server,
    command_line,
    edit_pairs,
    generation_prompts,
    launch,
    make_profile,
    save,
    serving,
    setup_logging,
    stop,
    summary,
    wait_ready,
    zsre_records,
)

log = logging.getLogger("bench.generate")

TEMPERATURE = 0.7


@dataclass(frozen=True)
class Sizes:
    edits: int  # in each prepared log
    edit_batch: int  # edits per /edit request when building the logs
    clients: tuple[int, ...]
    side_clients: tuple[int, ...]  # client counts of the "questions" and "edited" prompt sets
    hf_batches: tuple[int, ...]
    load_clients: int  # generating while edits are timed
    edits_timed: int  # idle, and again under load
    ramp_s: float  # before a window: every client has a request in flight
    window_s: float
    rounds: int
    new_tokens: int


FULL = Sizes(edits=1000, edit_batch=25, clients=(1, 4, 8, 16), side_clients=(1, 8), hf_batches=(1, 8),
             load_clients=8, edits_timed=6, ramp_s=5.0, window_s=15.0, rounds=3, new_tokens=32)
SMOKE = Sizes(edits=24, edit_batch=8, clients=(1, 4), side_clients=(1, 4), hf_batches=(1, 4), load_clients=4,
              edits_timed=2, ramp_s=0.5, window_s=2.0, rounds=1, new_tokens=8)
CONFIGS = {"none": "scoped", "scoped": "scoped", "inplace": "inplace"}  # server -> MEND_METHOD
PROMPTS = 64  # of each set


# ---- logs and servers ----------------------------------------------------------------------------------------

def build_log(p: Profile, s: Sizes, method: str, dtype: str) -> Path:
    """A data folder whose log holds s.edits edits of `method`, made through /edit by a real server; built once."""
    folder = p.out / "logs" / f"batched-{method}-{s.edits}"
    if (folder / "done.json").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    pairs = edit_pairs(s.edits)
    t0 = time.perf_counter()
    # The guard's canaries are off: these logs are the state generation is measured in, not a test of the guard.
    with serving(p, folder, p.out / "logs" / f"server-batched-{method}.log", MEND_METHOD=method, MEND_DTYPE=dtype,
                 MEND_GUARD_CANARIES="0") as server, httpx.Client(base_url=server.url, timeout=600) as http:
        for i in range(0, s.edits, s.edit_batch):
            r = http.post("/edit", json={"edits": pairs[i: i + s.edit_batch], "force": True, "author": "bench"})
            r.raise_for_status()
            log.info("%s log: %d of %d edits", method, min(i + s.edit_batch, s.edits), s.edits)
    (folder / "done.json").write_text(json.dumps({"edits": s.edits, "method": method, "batch": s.edit_batch,
                                                  "seconds": time.perf_counter() - t0}) + "\n")
    return folder


def start_servers(p: Profile, s: Sizes, dtype: str) -> dict[str, Server]:
    with ThreadPoolExecutor(2) as pool:  # two servers building at once: their startups overlap
        logs = dict(zip(("scoped", "inplace"), pool.map(lambda m: build_log(p, s, m, dtype), ("scoped", "inplace"))))
    servers = {}
    try:
        for name, method in CONFIGS.items():
            work = p.out / "work" / f"generate-{name}"
            shutil.rmtree(work, ignore_errors=True)
            if name in logs:
                shutil.copytree(logs[name], work, ignore=shutil.ignore_patterns("redis.pid", "redis.sock"))
            else:
                work.mkdir(parents=True)
            servers[name] = launch(p, work, p.out / "work" / f"generate-{name}.log", MEND_METHOD=method,
                                   MEND_DTYPE=dtype)
        for name, server in servers.items():
            wait_ready(server)
            ready = httpx.get(f"{server.url}/ready", timeout=30).json()
            want = 0 if name == "none" else s.edits // s.edit_batch  # a batch of 25 is one log event
            if ready["active_edits"] != want:
                raise RuntimeError(f"server {name} reports {ready['active_edits']} active edits, not {want}")
    except BaseException:
        for server in servers.values():
            stop(server)
        raise
    return servers


# ---- the service under load ----------------------------------------------------------------------------------

async def one_request(http: httpx.AsyncClient, prompt: str, seed: int, new_tokens: int) -> dict:
    body = {"prompt": prompt, "max_new_tokens": new_tokens, "temperature": TEMPERATURE, "seed": seed, "stream": True}
    t0 = time.perf_counter()
    first = None
    async with http.stream("POST", "/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if first is None and (event.get("text") or "finish_reason" in event):
                first = time.perf_counter() - t0
            if "finish_reason" in event:
                return {"tokens": event["completion_tokens"], "ttft": first, "start": t0, "end": time.perf_counter(),
                        "latency": time.perf_counter() - t0}
    raise RuntimeError("a stream ended without its last event")


async def service_load(url: str, clients: int, prompts: list[str], s: Sizes) -> dict:
    """`clients` clients sending streamed requests back to back for the ramp and the window; the requests that ran
    wholly inside the window are measured, and whatever is in flight at its end is dropped (the server stops
    decoding it)."""
    done: list[dict] = []
    tickets = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient, c: int) -> None:
        while True:
            i = next(tickets)
            done.append({"client": c, **await one_request(http, prompts[i % len(prompts)], i, s.new_tokens)})

    async with httpx.AsyncClient(base_url=url, timeout=600.0, limits=limits) as http:
        tasks = [asyncio.create_task(client(http, c)) for c in range(clients)]
        try:
            await asyncio.sleep(s.ramp_s)
            t0 = time.perf_counter()
            await asyncio.sleep(s.window_s)
            t1 = time.perf_counter()
        finally:  # also when this load is itself cancelled
            for t in tasks:
                t.cancel()
            failed = [e for e in await asyncio.gather(*tasks, return_exceptions=True)
                      if not isinstance(e, asyncio.CancelledError)]
        if failed:
            raise failed[0]
    inside = [d for d in done if d["start"] >= t0 and d["end"] <= t1]
    if not inside:
        raise RuntimeError(f"no request ran within the {s.window_s:.0f} s window at {clients} clients")
    return measured(inside, per_client_rate(inside))


def per_client_rate(inside: list[dict]) -> float:
    """Tokens/s in all: per client, the tokens of its requests in the window over the time from the first one's
    start to the last one's end (requests go back to back), summed. Counting the requests that end within a fixed
    window instead rounds to whole requests, and clients whose requests run in step end them in clumps: at 8
    clients and 32 tokens a request, a 20 s window counted in steps of 12.8 tokens/s."""
    total = 0.0
    for c in {d["client"] for d in inside}:
        mine = [d for d in inside if d["client"] == c]
        total += sum(d["tokens"] for d in mine) / (max(d["end"] for d in mine) - min(d["start"] for d in mine))
    return total


def measured(inside: list[dict], tokens_per_s: float) -> dict:
    tokens = sum(d["tokens"] for d in inside)
    return {"requests": len(inside), "tokens": tokens, "tokens_per_s": tokens_per_s,
            "tokens_per_request": tokens / len(inside), "ttft_ms": summary([d["ttft"] * 1000 for d in inside]),
            "latency_ms": summary([d["latency"] * 1000 for d in inside])}


# ---- plain model.generate ------------------------------------------------------------------------------------

class FirstToken:
    """A generate() streamer that notes when the first new tokens come (its first call is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def plain_generate(model, tok, batch: int, prompts: list[str], s: Sizes) -> dict:
    """model.generate on batches of `batch` prompts, back to back for the ramp and the window (as the clients)."""
    import torch

    ends = {tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id or [])}
    done, t_start = [], time.perf_counter()
    for i in itertools.count():
        group = [prompts[(i * batch + j) % len(prompts)] for j in range(batch)]
        tok.padding_side = "left"  # generate() continues every row from its last column
        try:
            enc = tok(group, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = "right"
        streamer = FirstToken()
        torch.manual_seed(i)
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=s.new_tokens, do_sample=True, temperature=TEMPERATURE, top_k=0,
                             top_p=1.0, pad_token_id=tok.pad_token_id, streamer=streamer)
        t1 = time.perf_counter()
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            n = next((k for k, t in enumerate(row) if t in ends), len(row))  # up to its end of sequence
            done.append({"tokens": n, "ttft": streamer.at - t0, "end": t1, "latency": t1 - t0})
        if t1 - t_start > s.ramp_s + s.window_s:
            break
    # Tokens over the time of the calls that made them.
    seconds = sum(done[k * batch]["latency"] for k in range(len(done) // batch))
    return measured(done, sum(d["tokens"] for d in done) / seconds)


# ---- edits while generating ----------------------------------------------------------------------------------

def time_edits(url: str, pairs: list[dict], load_clients: int, prompts: list[str], s: Sizes) -> dict:
    """POST /edit one at a time, idle and then while `load_clients` clients generate."""
    def edits(chunk: list[dict]) -> list[float]:
        ms = []
        with httpx.Client(base_url=url, timeout=600) as http:
            for pair in chunk:
                t0 = time.perf_counter()
                r = http.post("/edit", json={**pair, "force": True, "author": "bench"})
                r.raise_for_status()
                ms.append((time.perf_counter() - t0) * 1000)
        return ms

    idle = edits(pairs[: s.edits_timed])

    async def loaded() -> list[float]:
        long = Sizes(**{**asdict(s), "window_s": 3600.0})  # cancelled once the edits are timed
        load = asyncio.create_task(service_load(url, load_clients, prompts, long))
        await asyncio.sleep(s.ramp_s)
        ms = await asyncio.to_thread(edits, pairs[s.edits_timed: 2 * s.edits_timed])
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        return ms

    return {"idle_ms": summary(idle), "loaded_ms": summary(asyncio.run(loaded())), "clients": load_clients}


# ---- the run -------------------------------------------------------------------------------------------------

async def warm_up(url: str, prompts: list[str], s: Sizes) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600.0) as http:
        for i in range(2):
            await one_request(http, prompts[i], i, s.new_tokens)


def prompt_sets(s: Sizes) -> dict[str, list[str]]:
    facts = [f"Some facts about {r['loc_ans'].strip()}:" for r in zsre_records("dev") if r.get("loc_ans", "").strip()]
    return {"facts": facts[-PROMPTS:] or [f"Some facts about the number {i}:" for i in range(PROMPTS)],
            "questions": generation_prompts(PROMPTS),
            "edited": [e["prompt"] for e in edit_pairs(min(PROMPTS, s.edits))]}  # the first logged edits'


def measure(p: Profile, s: Sizes, servers: dict[str, Server], model, tok) -> list[dict]:
    sets = prompt_sets(s)
    for server in servers.values():  # first-request costs (allocations, lazy imports) are not throughput
        asyncio.run(warm_up(server.url, sets["facts"], s))
    plain_generate(model, tok, 1, sets["facts"], Sizes(**{**asdict(s), "ramp_s": 0.0, "window_s": 0.0}))
    jobs = [("service", name, c, "facts") for c in s.clients for name in servers]
    jobs += [("generate", "none", b, "facts") for b in s.hf_batches]
    jobs += [("service", "none", c, "questions") for c in s.side_clients]
    jobs += [("generate", "none", b, "questions") for b in s.hf_batches]
    jobs += [("service", name, c, "edited") for c in s.side_clients for name in ("none", "scoped")]
    rows = []
    for r in range(s.rounds):
        for kind, name, n, asked in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:
            got = (asyncio.run(service_load(servers[name].url, n, sets[asked], s)) if kind == "service"
                   else plain_generate(model, tok, n, sets[asked], s))
            rows.append({"round": r, "kind": kind, "config": name, "n": n, "prompts": asked, **got})
            log.info("round %d: %s %s %s x%d: %.1f tokens/s, TTFT p50 %.0f ms", r, kind, name, asked, n,
                     got["tokens_per_s"], got["ttft_ms"]["p50"])
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (kind, config, prompts, n): medians over rounds."""
    out = []
    for key in dict.fromkeys((r["kind"], r["config"], r["prompts"], r["n"]) for r in rows):
        mine = [r for r in rows if (r["kind"], r["config"], r["prompts"], r["n"]) == key]

        def med(f, mine=mine):
            return statistics.median(f(r) for r in mine)

        out.append({"kind": key[0], "config": key[1], "prompts": key[2], "n": key[3], "rounds": len(mine),
                    "tokens_per_s": med(lambda r: r["tokens_per_s"]),
                    "ttft_p50_ms": med(lambda r: r["ttft_ms"]["p50"]),
                    "ttft_p95_ms": med(lambda r: r["ttft_ms"]["p95"]),
                    "latency_p50_ms": med(lambda r: r["latency_ms"]["p50"]),
                    "tokens_per_request": med(lambda r: r["tokens_per_request"]),
                    "requests": sum(r["requests"] for r in mine)})
    return out


def ratios(table: list[dict], s: Sizes) -> dict:
    """The issue's targets as measured ratios (None where a level was not measured)."""
    def tps(kind: str, config: str, n: int, prompts: str = "facts") -> float | None:
        row = next((x for x in table if (x["kind"], x["config"], x["n"], x["prompts"]) == (kind, config, n, prompts)),
                   None)
        return None if row is None else row["tokens_per_s"]

    def ttft(config: str, n: int, key: str) -> float | None:
        row = next((x for x in table if (x["kind"], x["config"], x["n"], x["prompts"]) ==
                    ("service", config, n, "facts")), None)
        return None if row is None else row[key]

    div = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    top, mid = max(s.clients), s.load_clients
    return {"clients_mid_over_1": div(tps("service", "none", mid), tps("service", "none", 1)),
            "clients_top_over_1": div(tps("service", "none", top), tps("service", "none", 1)),
            "single_over_generate": div(tps("service", "none", 1), tps("generate", "none", 1)),
            "mid_over_generate_batch": div(tps("service", "none", mid), tps("generate", "none", mid)),
            "scoped_over_none_1": div(tps("service", "scoped", 1), tps("service", "none", 1)),
            "scoped_over_none_mid": div(tps("service", "scoped", mid), tps("service", "none", mid)),
            "inplace_over_none_mid": div(tps("service", "inplace", mid), tps("service", "none", mid)),
            "edited_scoped_over_none_mid": div(tps("service", "scoped", mid, "edited"),
                                               tps("service", "none", mid, "edited")),
            "questions_mid_over_1": div(tps("service", "none", mid, "questions"),
                                        tps("service", "none", 1, "questions")),
            "questions_mid_over_generate_batch": div(tps("service", "none", mid, "questions"),
                                                     tps("generate", "none", mid, "questions")),
            "ttft_p95_mid_over_p50_1": div(ttft("none", mid, "ttft_p95_ms"), ttft("none", 1, "ttft_p50_ms")),
            "clients_mid": mid, "clients_top": top}


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None,
         dtype: str = typer.Option("float32", help="served and generated in this dtype (float32, bfloat16)"),
         rounds: Optional[int] = typer.Option(None, help="rounds of every measurement (default 3; smoke 1)"),
         window: Optional[float] = typer.Option(None, help="seconds each measurement counts (default 15)")) -> None:
    """The service at 1-16 clients against plain model.generate, with no edits, 1,000 scoped and 1,000 in place."""
    import torch

    from editor_core import load_base_model

    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    s = SMOKE if smoke else FULL
    s = Sizes(**{**asdict(s), **({"rounds": rounds} if rounds else {}), **({"window_s": window} if window else {})})
    torch.set_num_threads(p.threads)
    lm, tok = load_base_model(p.model, dtype)
    servers = start_servers(p, s, dtype)
    try:
        rows = measure(p, s, servers, lm, tok)
        fresh = edit_pairs(2 * s.edits_timed, offset=s.edits)  # not in any log
        facts = prompt_sets(s)["facts"]
        edits = {name: time_edits(servers[name].url, fresh, s.load_clients, facts, s) for name in ("none", "inplace")}
    finally:
        for server in servers.values():
            stop(server)
    table = aggregate(rows)
    name = "generate_throughput" if dtype == "float32" else f"generate_throughput_{dtype}"
    save(p, name, {"rows": rows, "table": table, "ratios": ratios(table, s), "edits": edits, "sizes": asdict(s),
                   "dtype": dtype, "temperature": TEMPERATURE}, command_line())


if __name__ == "__main__":
    typer.run(main)
