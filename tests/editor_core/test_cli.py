"""`mend eval` through the console script's app, on a tiny model folder and a tiny data file."""
from __future__ import annotations

import json

import pytest
from editor_support import identity_editor
from typer.testing import CliRunner

import editor_core.cli
import service.cli
from editor_core.model import load_base_model


@pytest.fixture(scope="module")
def editor_dir(llama_dir, tmp_path_factory):
    model, _ = load_base_model(str(llama_dir))
    out = tmp_path_factory.mktemp("editor")
    identity_editor(model, init_alpha=1.0).save(out)
    return out


def _eval(app, llama_dir, editor_dir, data_files, *extra: str):
    return CliRunner().invoke(app, ["eval", "--editor", str(editor_dir), "--model", str(llama_dir),
                                    "--data", f"zsre:{data_files['zsre']}", "--n", "2", *extra])


def test_console_script_is_the_service_app_with_the_library_commands():
    assert service.cli.app is editor_core.cli.app  # pyproject's `mend` = service.cli:app: train, eval and serve
    names = {c.name or c.callback.__name__ for c in service.cli.app.registered_commands}
    assert {"train", "eval", "serve"} <= names


@pytest.mark.parametrize("app", [service.cli.app, editor_core.cli.app], ids=["service.cli", "editor_core.cli"])
def test_eval_prints_the_side_by_side_table_and_writes_json(app, llama_dir, editor_dir, data_files, tmp_path):
    out = tmp_path / "results.json"
    res = _eval(app, llama_dir, editor_dir, data_files, "--method", "mend", "--method", "ft", "--method", "ft-kl",
                "--loc-pool", f"counterfact:{data_files['counterfact']}", "--json", str(out))
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()  # stderr carries the weight-loading progress bar
    assert lines[0].startswith("| method | n | edit | rephrase | loc |")
    assert [l.split("|")[1:3] for l in lines[2:5]] == [[" mend ", " 2 "], [" ft ", " 2 "], [" ft-kl ", " 2 "]]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"mend", "ft", "ft-kl"} and doc["n"] == 2
    assert doc["results"]["ft"]["summary"]["n"] == 2


def test_eval_sequential_prints_the_curve_line(llama_dir, editor_dir, data_files):
    res = _eval(service.cli.app, llama_dir, editor_dir, data_files, "--sequential", "2", "--method", "mend",
                "--loc-pool", f"zsre:{data_files['zsre']}")
    assert res.exit_code == 0, res.output
    assert "mend after 2 sequential edits: edit" in res.output


def test_eval_refuses_mend_without_editor_and_unknown_methods(llama_dir, data_files):
    base = ["eval", "--model", str(llama_dir), "--data", f"zsre:{data_files['zsre']}", "--n", "1",
            "--loc-pool", f"zsre:{data_files['zsre']}"]
    res = CliRunner().invoke(service.cli.app, [*base, "--method", "mend"])
    assert res.exit_code != 0 and "needs --editor" in res.output
    res = CliRunner().invoke(service.cli.app, [*base, "--method", "rome"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_eval_mend_only_does_not_need_the_ft_kl_pool(llama_dir, editor_dir, data_files, tmp_path, monkeypatch):
    # The locality pool is FT+KL's alone; its default path (../shared/data/...) need not exist where this runs.
    monkeypatch.chdir(tmp_path)
    res = _eval(service.cli.app, llama_dir, editor_dir, data_files, "--method", "mend")
    assert res.exit_code == 0, repr(res.exception)


def test_fit_scope_then_eval_with_scoped_edits(llama_dir, editor_dir, data_files, tmp_path):
    import shutil
    ed = tmp_path / "editor"
    shutil.copytree(editor_dir, ed)
    res = CliRunner().invoke(editor_core.cli.app, [
        "fit-scope", "--editor", str(ed), "--model", str(llama_dir), "--data", f"zsre:{data_files['zsre']}",
        "--data", f"counterfact:{data_files['counterfact']}", "--key-block", "1", "--radius", "0.9", "--scale", "3",
        "--max-scale", "12", "--tune-steps", "3", "--word-radius", "0.45"])
    assert res.exit_code == 0, res.output
    assert "| radius |" in res.stdout and "radius 0.90 saved" in res.stdout
    assert json.loads((ed / "scope.json").read_text()) == {"key_block": 1, "radius": 0.9, "scale": 3.0, "window": 0,
                                                                 "max_scale": 12.0, "tune_steps": 3,
                                                                 "tune_lr": 0.05, "end_words": True,
                                                                 "bank_margin": 0.01, "relation_radius": None,
                                                                 "word_radius": 0.45}
    from editor_core.scope import Scope

    fitted = Scope.load(ed, [])
    assert fitted.bank is not None and len(fitted.bank) > 0  # the records' edit prompts
    assert fitted.word_check() is not None and {"the", "of"} <= fitted.common
    fitted.bank = None
    fitted.save(ed)
    res = CliRunner().invoke(editor_core.cli.app, ["fit-bank", "--editor", str(ed), "--model", str(llama_dir),
                                                   "--data", f"zsre:{data_files['zsre']}", "--n", "3"])
    assert res.exit_code == 0, res.output
    rebanked = Scope.load(ed, [])
    assert rebanked.bank.shape[0] == 3 and rebanked.fingerprint() == fitted.fingerprint()
    # These few records leave fit-scope no other question in one half: fit-relation on the CounterFact ones.
    res = CliRunner().invoke(editor_core.cli.app, ["fit-relation", "--editor", str(ed), "--model", str(llama_dir),
                                                   "--data", f"counterfact:{data_files['counterfact']}", "--k", "4"])
    assert res.exit_code == 0, res.output
    assert "| relation radius |" in res.stdout and "other questions select it" in res.stdout
    related = Scope.load(ed, [])
    assert related.relation.shape[0] <= 4 and related.cfg.relation_radius is not None
    assert related.fingerprint() == fitted.fingerprint() and related.bank.shape[0] == 3
    res = CliRunner().invoke(editor_core.cli.app, ["fit-words", "--editor", str(ed), "--data",
                                                   f"zsre:{data_files['zsre']}", "--n", "3", "--max-share", "0.5",
                                                   "--radius", "0.3"])
    assert res.exit_code == 0, res.output
    worded = Scope.load(ed, [])
    assert worded.cfg.word_radius == 0.3 and worded.common != fitted.common
    assert worded.fingerprint() == fitted.fingerprint() and worded.relation is not None
    # Without --radius, fitted: the table of every radius tried, and the lowest that keeps captures in bound.
    res = CliRunner().invoke(editor_core.cli.app, ["fit-words", "--editor", str(ed), "--model", str(llama_dir),
                                                   "--data", f"zsre:{data_files['zsre']}", "--data",
                                                   f"counterfact:{data_files['counterfact']}", "--n", "3",
                                                   "--max-share", "0.5", "--max-gain", "1"])
    assert res.exit_code == 0, res.output
    assert "| word radius |" in res.stdout and "| none |" in res.stdout and "word radius 0.1\n" in res.stdout
    assert Scope.load(ed, []).cfg.word_radius == 0.1  # any capture allowed: the lowest radius tried
    out = tmp_path / "scoped.json"
    res = _eval(editor_core.cli.app, llama_dir, ed, data_files, "--method", "mend-scoped", "--sequential", "2",
                "--generate", "2", "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "| mend-scoped | 2 |" in res.stdout
    summary = json.loads(out.read_text())["results"]["mend-scoped"]["summary"]
    assert summary["n"] == 2 and {"edit", "rephrase", "loc"} <= set(summary)
    said = {k: v for k, v in summary.items() if k.startswith("says_")}  # --generate: what the model says
    assert {"says_prompt", "says_chat", "says_unchanged", "says_entropy", "says_entropy_answer_in"} <= set(said)
    assert all(0 <= v <= 1 for k, v in said.items() if "entropy" not in k)


def test_train_fits_a_scope_that_the_service_runs_at_its_default_method(tokenizer, data_files, tmp_path):
    # A second architecture (GPT-2's Conv1D weights), as a user brings their own model: `mend train` leaves an
    # editor with its own fitted scope, and `mend serve`'s default (scoped) starts on it and edits.
    from editor_support import build_gpt2
    from fastapi.testclient import TestClient

    from editor_core.scope import key_block_candidates
    from service.main import create_app
    from service.settings import Settings

    model_dir = tmp_path / "gpt2"
    model = build_gpt2(tokenizer)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    spec = f"zsre:{data_files['zsre']}"
    res = CliRunner().invoke(editor_core.cli.app, [
        "train", "--model", str(model_dir), "--out", str(tmp_path / "run"), "--data", spec, "--dev", spec,
        "--steps", "2", "--val-every", "2", "--val-n", "2", "--batch-size", "2", "--n-loc", "2", "--rank", "8",
        "--precond-lambda", "0"])
    assert res.exit_code == 0, res.output
    best = tmp_path / "run" / "best"
    scope = json.loads((best / "scope.json").read_text())
    assert scope["key_block"] in key_block_candidates(model) and "| key block |" in res.stdout
    settings = Settings(model=str(model_dir), editor=best, data_dir=tmp_path / "data", threads=1, redis_url=None,
                        api_key=None, method="scoped", guard_max_captured=1.0)
    with TestClient(create_app(settings)) as client:
        r = client.post("/edit", json={"prompt": "The capital of France is", "target": "Rome"})
        assert r.status_code == 201, r.text
        assert client.post("/generate",
                           json={"prompt": "The capital of France is", "max_new_tokens": 3}).status_code == 200
