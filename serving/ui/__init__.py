"""The click-to-mask page, served at `/ui` (no build step, no CDN: plain HTML, CSS and JS here).

The page talks to the service's own routes: `/embed` once per image, then `/predict` per click
with the last click's logits (`mask_input_id`), as the official SAM demo does.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def ui_app() -> Starlette:
    """The page's files (index.html at `/ui/`), read from the package, never from a request's path."""
    return Starlette(routes=[Mount("/", app=StaticFiles(directory=STATIC, html=True), name="ui")])
