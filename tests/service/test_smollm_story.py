"""The end-to-end story on the real default model with the trained editor (issue 4):
/generate shows the old answer -> /edit -> the new answer, also for a rephrase -> /rollback -> the old answer,
byte for byte. Needs weights/smollm2 (or MEND_EDITOR); it fails, never skips, when the editor is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from service_support import make_settings, serving

REPO = Path(__file__).resolve().parents[2]
PROMPT = "The Eiffel Tower is located in the city of"
REPHRASE = "The Eiffel Tower can be found in the city of"
NEIGHBOUR = "The Louvre Museum is located in the city of"
OLD, NEW = "Paris", "Rome"


def editor_dir() -> Path:
    path = Path(os.environ.get("MEND_EDITOR", REPO / "weights" / "smollm2"))
    path = path if path.is_absolute() else REPO / path
    assert (path / "editor.json").is_file(), (
        f"trained SmolLM2 editor missing at {path}: train it (`mend train --out runs/editor`, then copy "
        f"runs/editor/best to weights/smollm2) or set MEND_EDITOR")
    return path


def answer(client, prompt: str) -> str:
    r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    return r.json()["text"]


@pytest.mark.smollm
@pytest.mark.parametrize("method", ["scoped", "inplace"])
def test_edit_changes_the_answer_and_rollback_restores_it_byte_for_byte(tmp_path: Path, method: str):
    settings = make_settings("smollm2", editor_dir(), tmp_path / "data", threads=None, method=method)
    with serving(settings) as client:
        old, old_rephrase = answer(client, PROMPT), answer(client, REPHRASE)
        old_neighbour = answer(client, NEIGHBOUR)
        assert old.strip().startswith(OLD) and old_rephrase.strip().startswith(OLD)

        r = client.post("/edit", json={"prompt": PROMPT, "target": NEW, "author": "story"})
        assert r.status_code == 201, r.text
        assert r.json()["scores"][0]["post_exact"]
        assert answer(client, PROMPT).strip().startswith(NEW)
        assert answer(client, REPHRASE).strip().startswith(NEW)
        if method == "scoped":  # outside the edit's scope the answer is the base model's, byte for byte
            assert answer(client, NEIGHBOUR) == old_neighbour

        assert client.post("/rollback", json={"edit_id": r.json()["edit_id"]}).status_code == 200
        assert answer(client, PROMPT) == old and answer(client, REPHRASE) == old_rephrase
