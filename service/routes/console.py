"""The web console at /console: three static files from service/console, served by the app (no build step).

They are served without the key (main.py puts this router beside the probes): they hold no data, and a browser
cannot send a bearer header on a plain navigation. The page asks for the key, keeps it in the tab's
sessionStorage and sends it on every API call, so the data stays behind the key."""
from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response

router = APIRouter(tags=["console"], include_in_schema=False)

# The console renders prompts, targets and replies, which are anyone's text: it builds the page with textContent
# only, and this policy is the second wall: no inline script, nothing loaded or sent anywhere but this origin, no
# framing (the page can edit the model, so a clickjacking frame would be an attack on it).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new version of the service brings its console along
}


def _file(name: str, media_type: str) -> Response:
    # importlib.resources: the files come from the package, in a checkout or an installed wheel alike
    return Response((files("service") / "console" / name).read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/console")
def console() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/console/console.js")
def script() -> Response:
    return _file("console.js", "text/javascript; charset=utf-8")


@router.get("/console/console.css")
def style() -> Response:
    return _file("console.css", "text/css; charset=utf-8")
