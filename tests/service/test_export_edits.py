"""GET /export and `mend export-edits` (issue 14 item 3): the active edits of one version as a PEFT adapter (scoped:
one per edit, with its keys and a manifest) or a merged checkpoint (in place only), loaded back with PEFT and
transformers and compared with what the service computes."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from pydantic import SecretStr
from safetensors.torch import load_file
from service_support import EDIT, EDIT2, EDIT3, serving
from transformers import AutoModelForCausalLM, LlamaForCausalLM
from typer.testing import CliRunner

from editor_core import EditRequest, score_targets
from editor_core.model import load_tokenizer
from service.cli import app as cli
from service.errors import MergedScopedExport, NothingToExport

TEXT = "The capital of France is Rome, and the largest planet is"
KEY = "export-key"


def export(client, fmt: str, dest: Path, **kw) -> dict:
    """GET /export, unzipped into dest; the manifest of the one folder it holds (its path under "folder")."""
    r = client.get("/export", params={"format": fmt}, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        z.extractall(dest)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]  # safetensors and JSON only
    (top,) = {n.split("/")[0] for n in names}
    assert top == f"mend-edits-v{r.headers['x-mend-version']}-{fmt}"
    assert f'filename="{top}.zip"' in r.headers["content-disposition"]
    manifest = json.loads((dest / top / "manifest.json").read_text())
    assert manifest["version"] == int(r.headers["x-mend-version"]) and manifest["export"] == fmt
    return {**manifest, "folder": dest / top}


@torch.no_grad()
def logits(model, tok) -> torch.Tensor:
    return model(input_ids=tok(TEXT, return_tensors="pt")["input_ids"]).logits[0]


def edit(client, body: dict) -> str:
    r = client.post("/edit", json=body)
    assert r.status_code == 201, r.text
    return r.json()["edit_id"]


def test_in_place_both_formats_compute_what_the_service_serves(inplace, tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    with serving(inplace) as client:
        r = client.get("/export", params={"format": "peft"})
        assert (r.status_code, r.json()["detail"]) == (409, NothingToExport.message)
        first, second = edit(client, EDIT), edit(client, EDIT2)
        assert client.post("/rollback", json={"edit_id": first}).status_code == 200
        served = logits(client.app.state.runtime.model, tok)
        adapter = export(client, "peft", tmp_path / "peft")
        checkpoint = export(client, "merged", tmp_path / "merged")

    base = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    assert (logits(base, tok) - served).abs().max() > 0.05  # the edit is visible
    for manifest in (adapter, checkpoint):
        assert manifest["version"] == 3 and manifest["method"] == "inplace"
        assert [e["edit_id"] for e in manifest["edits"]] == [second]  # the rolled-back edit is not in it
        assert manifest["edits"][0]["requests"] == [EDIT2]
    assert adapter["adapter"] == "." and checkpoint["checkpoint"] == "."
    peft_model = PeftModel.from_pretrained(base, adapter["folder"])
    assert (logits(peft_model, tok) - served).abs().max() <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(checkpoint["folder"])
    assert (logits(merged, tok) - served).abs().max() <= 1e-4
    assert load_tokenizer(checkpoint["folder"])(TEXT)["input_ids"] == tok(TEXT)["input_ids"]


def test_scoped_exports_one_adapter_per_active_edit_that_scores_as_the_service_does(settings, tiny_model_dir,
                                                                                    tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    with serving(settings) as client:
        gone = edit(client, EDIT)
        batch = edit(client, {"edits": [EDIT2, EDIT3]})  # one event, two key rows
        assert client.post("/rollback", json={"edit_id": gone}).status_code == 200
        rows = [EDIT2, EDIT3]
        r = client.post("/score", json={"items": rows})
        assert r.status_code == 200, r.text
        served = r.json()["scores"]
        manifest = export(client, "peft", tmp_path)
        stored_keys = client.app.state.runtime.method.view().delta(batch).key  # its rows: not held twice

    assert manifest["version"] == 3 and manifest["method"] == "scoped" and manifest["radius"] == 0.999
    assert [e["edit_id"] for e in manifest["edits"]] == [batch]
    adapters = manifest["adapters"]
    assert [(a["edit_id"], a["key_row"], a["keys_index"]) for a in adapters] == [(batch, 0, 0), (batch, 1, 1)]
    assert [{"prompt": a["prompt"], "target": a["target"]} for a in adapters] == rows
    assert all(a["step"] >= 1 for a in adapters)
    assert all(a["radius"] == 0.999 for a in adapters)  # a scope without a bank: every edit has the scope's radius
    assert torch.equal(load_file(manifest["folder"] / manifest["keys"])["keys"], stored_keys)
    assert (manifest["folder"] / "scope" / "scope.json").is_file()

    base = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    unedited = score_targets(base, tok, [EditRequest(**r) for r in rows])
    for a, row, want, before in zip(adapters, rows, served, unedited):
        peft_model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir),
                                               manifest["folder"] / a["adapter"])
        (got,) = score_targets(peft_model.get_base_model(), tok, [EditRequest(**row)])
        assert abs(got.logprob - want["logprob"]) <= 1e-4 and list(got.argmax) == want["argmax_ids"]
        assert abs(got.logprob - before.logprob) > 0.1  # the adapter carries the edit: the base scores otherwise


def test_export_needs_the_key_refuses_merged_when_scoped_and_checks_the_format(settings, tmp_path):
    auth = {"Authorization": f"Bearer {KEY}"}
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY)})) as client:
        assert client.get("/export", params={"format": "peft"}).status_code == 401
        r = client.get("/export", params={"format": "merged"}, headers=auth)
        assert (r.status_code, r.json()["detail"]) == (409, MergedScopedExport.message)
        for bad in ("lora", "", "PEFT"):
            r = client.get("/export", params={"format": bad}, headers=auth)
            assert r.status_code == 422 and r.json()["detail"].startswith("query.format:"), r.text
        manifest = export(client, "peft", tmp_path, headers=auth)  # no edit yet: an empty, honest export
        assert (manifest["version"], manifest["adapters"], manifest["edits"]) == (0, [], [])
        assert load_file(manifest["folder"] / "keys.safetensors")["keys"].shape[0] == 0


@pytest.fixture()
def env(settings) -> dict[str, str | None]:
    """The settings as the environment a `mend` command reads."""
    return {"MEND_MODEL": settings.model, "MEND_EDITOR": str(settings.editor), "MEND_DATA_DIR": str(settings.data_dir),
            "MEND_METHOD": settings.method, "MEND_THREADS": "1", "REDIS_URL": None, "MEND_API_KEY": None}


def test_the_cli_writes_the_folder_the_route_zips(settings, env, tmp_path):
    with serving(settings) as client:
        ids = [edit(client, EDIT), edit(client, EDIT2)]
        http = export(client, "peft", tmp_path / "http")
    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["export-edits", "--out", str(out)], env=env)
    assert res.exit_code == 0, res.output
    assert "exported 2 active edits at version 2" in res.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["edit_id"] for a in manifest["adapters"]] == ids
    assert {k: v for k, v in manifest.items() if k != "time"} == {
        k: v for k, v in http.items() if k not in ("time", "folder")}
    for a in manifest["adapters"]:  # the same adapters as the route's
        cli_dir, http_dir = out / a["adapter"], http["folder"] / a["adapter"]
        assert (cli_dir / "adapter_config.json").read_text() == (http_dir / "adapter_config.json").read_text()
        got, want = (load_file(d / "adapter_model.safetensors") for d in (cli_dir, http_dir))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)

    res = CliRunner().invoke(cli, ["export-edits", "--out", str(out)], env=env)
    assert res.exit_code == 2 and "exists" in res.output
    res = CliRunner().invoke(cli, ["export-edits", "--out", str(tmp_path / "l"), "--format", "lora"], env=env)
    assert res.exit_code == 2 and "--format must be one of peft, merged" in res.output
    res = CliRunner().invoke(cli, ["export-edits", "--out", str(tmp_path / "m"), "--format", "merged"], env=env)
    assert res.exit_code == 2 and "format=merged is refused with MEND_METHOD=scoped" in res.output
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m*"))
