"""The HTML report of a folder job (`sesam refine`, `sesam segment`): one row per image, its stats
beside its overlay picture, failures listed on top. Written atomically."""

from __future__ import annotations

import html
from pathlib import Path

from models.io import atomic_write


def image_src(picture: Path, base: Path) -> str:
    """The picture's address relative to the report (absolute file URI when outside `base`)."""
    try:
        return picture.relative_to(base).as_posix()
    except ValueError:
        return picture.resolve().as_uri()


def legend_html(legend: list[tuple[str, tuple[int, int, int]]]) -> str:
    """A row of colour swatches with their class names (plain text, escaped)."""
    items = "".join(
        f"<span class='key'><span class='swatch' style='background:rgb({r},{g},{b})'></span>{html.escape(name)}</span>"
        for name, (r, g, b) in legend
    )
    return f"<p class='legend'>{items}</p>" if items else ""


def write_html_report(
    path: Path,
    title: str,
    intro: str,
    rows: list[tuple[str, list[str], Path]],
    failures: dict[str, str],
    legend: list[tuple[str, tuple[int, int, int]]] | None = None,
) -> None:
    """rows: (stem, caption lines, overlay picture); `intro` and captions are plain text; `legend`:
    (class name, overlay colour) pairs shown above the rows."""
    body = []
    for stem, lines, picture in rows:
        caption = "".join(f"<br>{html.escape(line)}" for line in lines)
        src = html.escape(image_src(picture, path.parent))
        body.append(
            f"<tr><td><b>{html.escape(stem)}</b>{caption}</td><td><img src='{src}' loading='lazy'></td></tr>"
        )
    failed = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in failures.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{vertical-align:top;padding:6px}} img{{max-width:960px}}
table{{border-collapse:collapse}} tr{{border-bottom:1px solid #ddd}}
.key{{margin-right:1.2em;white-space:nowrap}} .swatch{{display:inline-block;width:1em;height:1em;
margin-right:.35em;vertical-align:middle;border:1px solid #555}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>
{legend_html(legend or [])}
{"<h2>Failures</h2><ul>" + failed + "</ul>" if failed else ""}
<table>{"".join(body)}</table></body></html>"""
    atomic_write(path, lambda tmp: Path(tmp).write_text(page))
