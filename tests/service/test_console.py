"""The web console (/console): its files and their headers over the app, and the console itself in a real headless
Chromium (the distribution's chromium and chromedriver, driven by selenium) against a real uvicorn server with the
default method and an API key: load, enter the key, preview, commit, see it in the list, open it, roll back,
filter by author, and the server's errors shown as they come. Every wait is bounded."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from service_support import EDIT, EDIT2, http_serving, serving

from service.settings import Settings

KEY = "console-test-key"
GOOD = {"Authorization": f"Bearer {KEY}"}
WAIT = 60  # seconds, for any one thing the page shows: a tiny-model edit takes well under one on a busy 2-core box
XSS = '<img src=x onerror="window.__xss = 1">'
CONSOLE = ("/console", "/console/console.js", "/console/console.css")
ROOT = Path(__file__).resolve().parents[2]


# ---- the files, over the app (no browser)

@pytest.fixture()
def keyed(settings: Settings) -> Iterator:
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY)})) as client:
        yield client


def test_the_console_loads_without_the_key_but_its_data_needs_it(keyed):
    for path, kind in zip(CONSOLE, ("text/html", "text/javascript", "text/css")):
        r = keyed.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.status_code)
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert keyed.get("/edits").status_code == 401 and keyed.get("/edits", headers=GOOD).status_code == 200
    page = keyed.get("/console").text
    assert 'src="console/console.js"' in page and "<script>" not in page  # no inline script: the CSP allows none


def test_console_paths_that_are_not_its_files_are_not_found(keyed):
    assert keyed.get("/console/", follow_redirects=False).headers["location"].endswith("/console")
    for path in ("/console/index.html", "/console/../service/main.py", "/console/nope.js", "/console/console.js/x"):
        assert keyed.get(path).status_code == 404, path


def test_the_console_files_are_in_the_wheel(tmp_path: Path):
    # An installed service (the Docker image runs `pip install .`) must serve its console and find the guard's
    # default canaries: they are package data (pyproject.toml), not just files in a checkout.
    # Built from a copy: pip builds in the source tree, and would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    for name in ("service", "editor_core"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path), str(src)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("mend_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"service/console/{n}" for n in ("index.html", "console.js", "console.css")} <= names
    assert "service/canaries.json" in names


# ---- the console in a browser

def browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        return "chromium and chromedriver are not installed (`make test` installs them where apt-get can)"
    return None


@pytest.fixture(scope="module")
def driver():
    if reason := browser_missing():
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)  # no sandbox: CI runs as root, where Chromium's sandbox refuses to start
    # The system's chromedriver, named: selenium then never tries to download one (nothing can be downloaded here).
    d = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    d.set_page_load_timeout(WAIT)
    d.set_script_timeout(WAIT)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture()
def server(settings: Settings) -> Iterator[str]:
    """The default method (scoped), with a key: the console's base URL."""
    with http_serving(settings.model_copy(update={"api_key": SecretStr(KEY)})) as (_app, url):
        yield url


@pytest.fixture()
def api(server: str) -> Iterator[httpx.Client]:
    """The same server, spoken to directly with the key: to check what the page did, or act behind its back."""
    with httpx.Client(base_url=server, headers=GOOD, timeout=WAIT) as client:
        yield client


class Page:
    """The console in the browser: what a person would do and see, by element id, every wait bounded."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.common.by import By  # here, not at the top: without selenium the module still runs
        from selenium.webdriver.support.ui import WebDriverWait
        self.d, self.url, self.By = driver, url, By
        self.wait_ = WebDriverWait(driver, WAIT)
        driver.get(f"{url}/console")
        # A port can come back in a later test, and with it the origin's storage of an earlier one (the key).
        driver.execute_script("sessionStorage.clear(); localStorage.clear()")
        driver.get(f"{url}/console")

    def el(self, id_: str):
        return self.d.find_element(self.By.ID, id_)

    def wait(self, condition, what: str):
        return self.wait_.until(lambda _d: condition(), message=f"{what}: not seen in {WAIT} s")

    def text(self, id_: str) -> str:
        return self.el(id_).text  # "" while hidden

    def shows(self, id_: str, expected: str) -> str:
        return self.wait(lambda: self.text(id_) if expected in self.text(id_) else None, f"#{id_} to show {expected!r}")

    def fill(self, id_: str, value: str) -> None:
        box = self.el(id_)
        box.clear()
        box.send_keys(value)

    def click(self, id_: str) -> None:
        self.wait(lambda: self.el(id_).is_enabled(), f"#{id_} enabled")
        self.el(id_).click()

    def rows(self) -> list[tuple[str, str]]:
        """The audit list: (edit_id, row text) per row, read in one script: the page replaces rows as it reloads."""
        script = ("return Array.from(document.querySelectorAll('#edits tr[data-edit-id]'), "
                  "r => [r.dataset.editId, r.innerText])")
        return [tuple(r) for r in self.d.execute_script(script)]

    def listed(self, ids: list[str]) -> None:
        self.wait(lambda: [i for i, _ in self.rows()] == ids, f"the audit list to be {ids}")

    def open(self, edit_id: str) -> None:
        self.d.find_element(self.By.CSS_SELECTOR, f'#edits tr[data-edit-id="{edit_id}"] button').click()
        self.shows("detail-id", edit_id)

    def preview(self, prompt: str, target: str) -> None:
        self.fill("prompt", prompt)
        self.fill("target", target)
        self.click("preview-btn")
        self.shows("preview-meta", "nothing written")

    def commit(self) -> str:
        self.click("commit-btn")
        return re.search(r"Committed edit (\w+)", self.shows("commit-result", "Committed edit")).group(1)

    def filter(self, status: str = "", author: str = "") -> None:
        from selenium.webdriver.support.ui import Select
        Select(self.el("filter-status")).select_by_value(status)
        self.fill("filter-author", author)
        self.click("filter-btn")


def test_console_preview_commit_list_detail_rollback_and_filter(driver, server: str, api: httpx.Client):
    page = Page(driver, server)
    # The page loads without the key; its data does not.
    page.shows("key-status", "This server needs its API key")
    page.shows("list-error", "401: missing or invalid API key")
    page.fill("key", "wrong")
    page.click("key-use")
    page.shows("key-status", "The server refused this key")
    page.fill("key", KEY)
    page.click("key-use")
    page.shows("edits", "no edits")
    assert not page.el("key-status").is_displayed() and not page.el("list-error").is_displayed()
    page.shows("server", "log version 0")

    # Preview: the numbers and replies of a dry run, and nothing written.
    page.fill("author", "alice")
    page.preview(EDIT["prompt"], EDIT["target"])
    assert api.get("/edits").json()["count"] == 0
    scores = page.text("preview-scores")
    assert EDIT["prompt"] in scores and " → " in scores and "no → yes" in scores  # Rome becomes the argmax
    assert "The guard lets it through: 0 of 100 canary prompts inside its scope" in page.text("preview-guard")
    before, after = (c.text for c in page.d.find_elements(page.By.CSS_SELECTOR, "#preview-replies td"))
    assert after.startswith(" Rome") and before != after  # joined with a space, as /edit joins it

    # Commit: the edit is in the list and its details open, and /generate now says what the preview said.
    first = page.commit()
    page.listed([first])
    page.shows("field-status", "active")
    assert page.text("detail-fields").count("alice") == 1 and api.get(f"/edits/{first}").json()["author"] == "alice"
    page.shows("tries", "v1")
    assert page.d.find_element(page.By.CSS_SELECTOR, "#tries tr td.reply").text == after
    page.shows("server", "log version 1 · 1 active edit")

    # A second edit by bob whose prompt is markup: shown as the text it is, nowhere run or parsed.
    page.fill("author", "bob")
    page.preview(XSS, EDIT2["target"])
    second = page.commit()
    page.listed([second, first])  # newest first
    assert XSS in dict(page.rows())[second] and XSS in page.text("detail-requests")
    assert page.d.execute_script("return [document.querySelectorAll('img').length, window.__xss]") == [0, None]

    # Filter by author and by status.
    page.filter(author="alice")
    page.listed([first])
    page.filter(author="bob")
    page.listed([second])
    page.filter(author="nobody")
    page.shows("edits", "no edits")

    # Roll back the first edit from its details: its status changes in the details and in the list.
    page.filter()
    page.listed([second, first])
    page.open(first)
    page.fill("rollback-note", "wrong fact")
    page.click("rollback-btn")
    page.shows("rollback-result", "Rolled back as log version 3")
    page.shows("field-status", "rolled back")
    page.shows("field-rolled", "by bob")
    assert not page.el("rollback-btn").is_enabled()
    page.wait(lambda: "rolled back" in dict(page.rows())[first], "the list to show the rollback")
    assert api.get(f"/edits/{first}").json()["rollback"]["note"] == "wrong fact"
    page.filter(status="active")
    page.listed([second])

    # Someone else rolls the second edit back while the page shows it active: the page shows the server's 409.
    page.open(second)
    assert api.post("/rollback", json={"edit_id": second}).status_code == 200
    page.click("rollback-btn")
    page.shows("detail-error", "409: edit is already rolled back")
    page.shows("field-status", "rolled back")

    # A bad request is refused with the server's own message, and nothing is written.
    page.preview(EDIT2["prompt"], "x")
    page.fill("target", "   ")
    page.click("preview-btn")
    page.shows("edit-error", "422: target: must not be empty or whitespace")
    assert not page.el("commit-btn").is_enabled()
    assert api.get("/edits").json()["count"] == 2


def test_console_shows_a_guard_refusal_and_commits_it_when_forced(driver, settings: Settings):
    # The default guard, with a limit of no captured canary: an edit of a canary's own prompt is refused.
    canary = json.loads(settings.canaries.read_text())[1]
    strict = settings.model_copy(update={"api_key": SecretStr(KEY), "guard_max_captured": 0.0})
    with http_serving(strict) as (_app, url):
        page = Page(driver, url)
        page.fill("key", KEY)
        page.click("key-use")
        page.shows("edits", "no edits")
        page.preview(canary, "Rome")
        page.shows("preview-guard", "The guard would refuse this edit: edit rejected: its scope")
        page.click("commit-btn")
        page.shows("edit-error", "422: edit rejected: its scope")
        assert "covers 1 of 100 canary prompts" in page.text("edit-error")
        assert httpx.get(f"{url}/edits", headers=GOOD).json()["count"] == 0
        page.el("force").click()
        edit_id = page.commit()
        page.listed([edit_id])
        page.shows("field-forced", "yes")
        page.shows("field-guard", "overridden true")


def test_console_pages_the_audit_trail_newest_first(driver, server: str, api: httpx.Client):
    ids = [api.post("/edit", json={"prompt": f"Fact number {i} is", "target": "true"}).json()["edit_id"]
           for i in range(21)]  # one more than a page
    page = Page(driver, server)
    page.fill("key", KEY)
    page.click("key-use")
    page.shows("page-info", "1–20 of 21")
    page.listed(ids[:0:-1])
    assert not page.el("newer").is_enabled()
    page.click("older")
    page.shows("page-info", "21–21 of 21")
    page.listed(ids[:1])
    assert not page.el("older").is_enabled()
    page.click("newer")
    page.listed(ids[:0:-1])
