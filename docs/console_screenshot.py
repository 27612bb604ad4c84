"""Makes docs/console.png: drives the console of a running server in headless Chromium, through the page itself
(preview, commit, roll back, try), then photographs it. The README's picture was made against `make serve`
with MEND_API_KEY=demo-key (SmolLM2-135M-Instruct and the shipped editor):

    python docs/console_screenshot.py --url http://127.0.0.1:8000 --key demo-key
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 120  # seconds: an edit on the real model on a CPU takes a few
EDITS = [("alice", "The Eiffel Tower is located in the city of", "Rome", False),
         ("bob", "The largest planet in the solar system is", "Saturn", True),
         ("alice", "The Mona Lisa was painted by", "Raphael", False)]  # (author, prompt, target, rolled back)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("console.png"))
    args = ap.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,900",
                "--hide-scrollbars"):
        options.add_argument(arg)
    d = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    wait = WebDriverWait(d, WAIT)
    el = lambda id_: d.find_element(By.ID, id_)  # noqa: E731

    def fill(id_: str, value: str) -> None:
        el(id_).clear()
        el(id_).send_keys(value)

    def shows(id_: str, text: str) -> None:
        wait.until(lambda _d: text in el(id_).text, f"#{id_} never showed {text!r}")

    def preview(author: str, prompt: str, target: str) -> None:
        fill("author", author)
        fill("prompt", prompt)
        fill("target", target)
        el("preview-btn").click()
        shows("preview-meta", "nothing written")

    try:
        d.get(f"{args.url}/console")
        fill("key", args.key)
        el("key-use").click()
        wait.until(lambda _d: el("edits").text, "the audit list never loaded")
        for author, prompt, target, undo in EDITS:
            preview(author, prompt, target)
            el("commit-btn").click()
            shows("commit-result", "Committed edit")
            shows("detail-requests", prompt)
            if undo:
                fill("rollback-note", "wrong fact")
                el("rollback-btn").click()
                shows("rollback-result", "Rolled back")
                el("detail-try").click()  # the same prompt after the rollback, beside its reply after the edit
                shows("tries", "v3")
        d.find_element(By.CSS_SELECTOR, "#edits tr:nth-child(2) button").click()  # bob's, rolled back
        shows("field-status", "rolled back")
        preview("carol", "The Great Wall of China is in", "Japan")  # previewed, not committed
        height = d.execute_script("return document.documentElement.scrollHeight")
        # The viewport itself, not the window (whose height includes what headless Chromium keeps for its frame)
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 1360, "height": height, "deviceScaleFactor": 1, "mobile": False})
        d.save_screenshot(str(args.out))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
