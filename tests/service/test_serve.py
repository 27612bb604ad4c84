"""`mend serve` as a real process over real HTTP: the command the README and the container run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from service_support import EDIT, GUARD_OFF

KEY = {"Authorization": "Bearer test-key"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mend() -> Path:
    script = Path(sys.executable).parent / "mend"  # the script of this interpreter's environment, activated or not
    assert script.is_file(), ("the `mend` console script is not installed: pip install -e . "
                              "(pyproject's [project.scripts])")
    return script


@contextmanager
def mend_serve(env: dict[str, str], log: Path,
               host: str = "127.0.0.1") -> Iterator[tuple[subprocess.Popen, httpx.Client]]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([str(mend()), "serve", "--host", host, "--port", str(port)],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_ready(proc, client, log)
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_ready(proc: subprocess.Popen, client: httpx.Client, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mend serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"mend serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def tiny_env(tiny_model_dir: Path, tiny_editor_dir: Path, tmp_path: Path, **env: str) -> dict[str, str]:
    # Every auth setting explicit, so a developer's MEND_API_KEY or MEND_ALLOW_NO_KEY does not leak in.
    return {"MEND_MODEL": str(tiny_model_dir), "MEND_EDITOR": str(tiny_editor_dir),
            "MEND_DATA_DIR": str(tmp_path / "data"), "MEND_THREADS": "1", "REDIS_URL": "", "MEND_METHOD": "inplace",
            "MEND_GUARD_MAX_CHANGED": str(GUARD_OFF), "MEND_API_KEY": "", "MEND_ALLOW_NO_KEY": "false", **env}


def test_mend_serve_edits_survive_kill_9_and_a_second_process_has_the_same_weights(
        tiny_model_dir: Path, tiny_editor_dir: Path, tmp_path: Path):
    env = tiny_env(tiny_model_dir, tiny_editor_dir, tmp_path, MEND_API_KEY="test-key")
    log = tmp_path / "serve.log"
    generate = {"prompt": EDIT["prompt"], "max_new_tokens": 3}
    with mend_serve(env, log) as (proc, client):
        assert client.post("/edit", json=EDIT).status_code == 401
        r = client.post("/edit", json=EDIT, headers=KEY)
        assert r.status_code == 201, r.text
        text = client.post("/generate", json=generate, headers=KEY).json()["text"]
        first = client.get("/ready").json()
        assert first["version"] == 1 and client.get("/docs").status_code == 200
        proc.send_signal(signal.SIGKILL)  # no shutdown hook runs: its Redis child must go by itself
        proc.wait()
    with mend_serve(env, log) as (proc, client):
        again = client.get("/ready").json()
        assert (again["version"], again["weights"]) == (first["version"], first["weights"])
        assert client.post("/generate", json=generate, headers=KEY).json()["text"] == text
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: exit status -15 after a clean shutdown.
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert log.read_text().rstrip().endswith(f"Finished server process [{proc.pid}]")
    assert not (tmp_path / "data" / "redis" / "redis.pid").exists()  # clean shutdown stopped Redis too


def test_mend_serve_on_all_interfaces_without_a_key_refuses_to_start(
        tiny_model_dir: Path, tiny_editor_dir: Path, tmp_path: Path):
    env = tiny_env(tiny_model_dir, tiny_editor_dir, tmp_path)
    proc = subprocess.run([str(mend()), "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "mend serve: refusing to serve on 0.0.0.0 without an API key" in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before Redis or the model was started


def test_mend_serve_on_all_interfaces_starts_with_allow_no_key(
        tiny_model_dir: Path, tiny_editor_dir: Path, tmp_path: Path):
    # docker-compose's case: the container binds 0.0.0.0 and the host publishes the port on 127.0.0.1 only.
    env = tiny_env(tiny_model_dir, tiny_editor_dir, tmp_path, MEND_ALLOW_NO_KEY="true")
    with mend_serve(env, tmp_path / "serve.log", host="0.0.0.0") as (_proc, client):
        assert client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
