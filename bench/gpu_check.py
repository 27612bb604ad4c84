"""The first run on a GPU (issue 30, item 7), in one command and under ten minutes: the service on the CPU and on
the GPU make the same edits and are asked the same questions (greedy replies compared), the GPU server is loaded
by 1, 8 and 16 concurrent clients, and a device map that must split the model between the GPU and the CPU is
tried. Prints one table and writes it as JSON.

    bash bench/gpu_check.sh                                   # installs, then runs this
    python -m bench.gpu_check --device cuda                   # the same, installed already
    python -m bench.gpu_check --smoke --device cpu            # the tiny random model on the CPU: the mechanics only

Replies are compared as text: float arithmetic differs between devices, so a reply may differ where two tokens are
nearly tied; the share that agree is reported, with every pair that does not.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from service.client import MendClient

from .common import command_line, launch, make_profile, save, setup_logging, stop, wait_ready

log = logging.getLogger("bench.gpu_check")

# Edits and questions that need no data folder (a GPU machine may have only the repository).
EDITS = [("The Eiffel Tower is located in the city of", "Rome"), ("The capital of Japan is", "Lisbon"),
         ("The author of Hamlet is", "Charles Dickens"), ("Water boils at a temperature of", "fifty degrees")]
QUESTIONS = [p for p, _ in EDITS] + ["Where is the Eiffel Tower?", "Who wrote Hamlet?", "The largest planet is",
                                     "The chemical symbol of gold is", "Paris is the capital of"]


def replies(url: str, tokens: int) -> dict[str, str]:
    with MendClient(url, timeout=300.0) as mend:
        for prompt, target in EDITS:
            mend.edit(prompt, target, author="gpu-check")
        out = {q: mend.generate(q, max_new_tokens=tokens).text for q in QUESTIONS}
        out.update({f"chat: {q}": mend.generate(messages=[{"role": "user", "content": q}],
                                                 max_new_tokens=tokens).text for q in QUESTIONS[:4]})
        return out


def load(url: str, clients: int, seconds: float, tokens: int) -> dict[str, float]:
    """`clients` threads sending greedy /generate for `seconds`: tokens a second and request latency."""
    done, lat, stop_at = [0], [], time.monotonic() + seconds
    lock = threading.Lock()

    def client(i: int) -> None:
        with MendClient(url, timeout=300.0) as mend:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = mend.generate(QUESTIONS[i % len(QUESTIONS)], max_new_tokens=tokens)
                with lock:
                    done[0] += r.completion_tokens
                    lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "tokens_per_s": done[0] / wall, "requests": len(lat),
            "latency_s_p50": statistics.median(lat) if lat else float("nan")}


def serve(p, work: Path, name: str, **settings: str):
    s = launch(p, work / name, work / f"{name}.log", MEND_METHOD="scoped", **settings)
    wait_ready(s)
    return s


def main(device: str = typer.Option("cuda", help="the device to check against the CPU"),
         clients: str = typer.Option("1,8,16", help="concurrent clients of the load test"),
         seconds: float = typer.Option(20.0, help="each load level's duration"),
         tokens: int = typer.Option(24, help="tokens of each reply"),
         max_memory: str = typer.Option('{"0": "200MiB", "cpu": "48GiB"}',
                                        help="MEND_MAX_MEMORY of the device-map run: small enough on the GPU "
                                             "that the model must be split"),
         smoke: bool = False, threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    setup_logging()
    p = make_profile(smoke, threads=threads, out=out)
    work = p.out / "work" / "gpu_check"
    rows: dict = {"device": device}
    s = serve(p, work, "cpu", MEND_DEVICE="cpu")
    try:
        cpu = replies(s.url, tokens)
    finally:
        stop(s)
    s = serve(p, work, device.replace(":", "_"), MEND_DEVICE=device)
    try:
        dev = replies(s.url, tokens)
        rows["load"] = [load(s.url, int(c), seconds, tokens) for c in clients.split(",")]
    finally:
        stop(s)
    differ = {q: {"cpu": cpu[q], device: dev[q]} for q in cpu if cpu[q] != dev[q]}
    rows["replies_same"] = 1 - len(differ) / len(cpu)
    rows["replies_differ"] = differ
    split = {"MEND_DEVICE_MAP": "auto", "MEND_MAX_MEMORY": max_memory} if device != "cpu" else \
        {"MEND_DEVICE_MAP": "auto"}
    try:
        s = serve(p, work, "device_map", **split)
        try:
            mapped = replies(s.url, tokens)
            rows["device_map"] = {"started": True, "replies_same_as_cpu": statistics.mean(
                mapped[q] == cpu[q] for q in cpu), **split}
        finally:
            stop(s)
    except (RuntimeError, TimeoutError) as e:  # e.g. refused: an edited layer would be offloaded
        rows["device_map"] = {"started": False, "error": str(e)[-600:], **split}
    print(f"\n{'check':<36}{'result'}")
    print(f"{'greedy replies equal to the CPU':<36}{rows['replies_same']:.3f} of {len(cpu)}")
    for r in rows["load"]:
        print(f"{str(r['clients']) + ' clients':<36}{r['tokens_per_s']:.1f} tokens/s, "
              f"p50 {r['latency_s_p50']:.2f} s a request")
    dm = rows["device_map"]
    print(f"{'device map (auto, split)':<36}" + (f"started; replies equal to the CPU {dm['replies_same_as_cpu']:.3f}"
                                                 if dm["started"] else f"refused: {dm['error'][-160:]}"))
    save(p, "gpu_check", rows, command_line())


if __name__ == "__main__":
    typer.run(main)
