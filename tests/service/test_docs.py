"""Every curl command and Python example in README.md and docs/ runs against a real server (the tiny model, with an
API key) and succeeds, so the docs cannot drift from the service; every bench command they show names only flags
its script has."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from service_support import http_serving

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "weights" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEY = "doc-key"


def blocks(lang: str) -> list[tuple[Path, str]]:
    out = []
    for page in PAGES:
        out += [(page, b) for b in re.findall(rf"^ *```{lang}\n(.*?)^ *```", page.read_text(), re.M | re.S)]
    return out


def commands(block: str, first: str) -> list[str]:
    """The shell statements of a block that start with `first`, continuation lines and quoted newlines joined."""
    out, pending, glue = [], "", "\n"
    for line in block.splitlines():
        line = line.strip()
        if not pending and not line.startswith(first):
            continue
        pending = f"{pending}{glue}{line}" if pending else line
        glue = "\n"
        if pending.endswith("\\"):
            pending, glue = pending[:-1].rstrip(), " "
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the statement goes on
            continue
        out.append(pending)
        pending = ""
    return out


CURLS = [(p.name, c) for p, b in blocks("bash") for c in commands(b, "curl ")]
PYTHON = [(p.name, b) for p, b in blocks("python") if "localhost:8000" in b]


def test_the_docs_show_commands_to_run():
    assert len(CURLS) >= 20 and any("openai" in b for _, b in PYTHON)


@pytest.fixture()
def server(settings):
    with http_serving(settings.model_copy(update={"api_key": SecretStr(KEY)})) as (app, url):
        yield url


def test_every_curl_in_the_docs_works(server, tmp_path):
    import httpx

    env = {**os.environ, "MEND_API_KEY": KEY, "KEY": f"Authorization: Bearer {KEY}"}
    host = server.removeprefix("http://")
    made = httpx.post(f"{server}/edit", json={"prompt": "Docs edit", "target": "ok"},
                      headers={"Authorization": f"Bearer {KEY}"}).json()["edit_id"]
    model = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
    for page, cmd in CURLS:
        cmd = cmd.replace("localhost:8000", host).replace("3f2a...", made)
        cmd = cmd.replace('"model": "smollm2"', f'"model": "{model}"')  # the docs' model is the default one
        if "-H" not in cmd or "$KEY" not in cmd:
            cmd = cmd.replace("curl ", 'curl -H "$KEY" ', 1)
        if '"to_version": 0' in cmd or "rollback" in cmd and made in cmd:
            continue  # run last: they would roll back what the later commands read
        if "# in place only" in cmd:
            continue  # the server here runs the default method (scoped), where it is refused as documented
        run = subprocess.run(["bash", "-c", cmd.replace("curl ", "curl --fail-with-body ", 1)], env=env,
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert run.returncode == 0, (page, cmd, run.stdout[-2000:], run.stderr[-2000:])
    for page, cmd in CURLS:
        if '"to_version": 0' in cmd:
            httpx.post(f"{server}/edit", json={"prompt": "Docs edit", "target": "ok"},
                       headers={"Authorization": f"Bearer {KEY}"})  # something to roll back
            cmd = cmd.replace("localhost:8000", host)
            if "$KEY" not in cmd:
                cmd = cmd.replace("curl ", 'curl -H "$KEY" ', 1)
            run = subprocess.run(["bash", "-c", cmd.replace("curl ", "curl --fail-with-body ", 1)], env=env,
                                 capture_output=True, text=True, timeout=300, cwd=tmp_path)
            assert run.returncode == 0, (page, cmd, run.stdout[-2000:], run.stderr[-2000:])


def test_every_python_example_in_the_docs_runs(server):
    import httpx

    model = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
    for page, code in PYTHON:
        code = code.replace("http://localhost:8000", server).replace('api_key="none"', f'api_key="{KEY}"')
        code = code.replace('model="smollm2"', f'model="{model}"')
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env={**os.environ, "MEND_API_KEY": KEY})
        assert run.returncode == 0, (page, code, run.stderr[-2000:])


def test_every_bench_command_in_the_docs_names_flags_its_script_has():
    shown = [c for _, b in blocks("bash") for c in commands(b, "python -m bench.")]
    assert shown
    for cmd in shown:
        args = shlex.split(cmd, comments=True)
        helptext = subprocess.run([sys.executable, "-m", args[2], "--help"], capture_output=True, text=True,
                                  cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "300"}).stdout
        for flag in (a.split("=")[0] for a in args[3:] if a.startswith("-")):
            assert flag in helptext, (cmd, flag)
