"""Bad input over real HTTP, on every route: no 5xx, no hang, one error shape, no leak.

One `bentoml serve` (classical prior, the shipped CamVid student, small caps). Each case sends one
malformed request and checks the whole contract: the expected 4xx status, a body of exactly
`{"error": {"code", "message", "field"}}` naming the expected field, no server path and no
traceback in it, an answer within the client's timeout (a hang fails), and a server that still
answers /livez. After each group of cases a real request per route must still succeed.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.cli import serve_command
from serving.errors import CODES
from tests.conftest import REPO, free_port
from tests.conftest import running_server as _running

MAX_PROMPTS = 4
MAX_POINTS = 8
MAX_WEAK = 16
MAX_SCRIBBLE_POINTS = 200
MAX_PIXELS = 1_000_000
MAX_IMAGES = 3
MAX_FIELD = 64 * 1024
MAX_BODY = 4 * 1024**2
TIMEOUT_S = 60
LEAKS = ("Traceback", 'File "', "/tmp/", "/work/", "/home/", "/root/", "site-packages", ".venv")


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("bad_inputs") / "bentoml.log"
    env = dict(
        os.environ,
        BENTOML_DO_NOT_TRACK="true",
        SESAM_BACKEND="classical",
        SESAM_MAX_PROMPTS=str(MAX_PROMPTS),
        SESAM_MAX_POINTS_PER_PROMPT=str(MAX_POINTS),
        SESAM_MAX_WEAK_LABELS=str(MAX_WEAK),
        SESAM_MAX_SCRIBBLE_POINTS=str(MAX_SCRIBBLE_POINTS),
        SESAM_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
        SESAM_MAX_IMAGES=str(MAX_IMAGES),
        SESAM_MAX_FIELD_BYTES=str(MAX_FIELD),
        SESAM_MAX_BODY_BYTES=str(MAX_BODY),
        SESAM_BATCHING="0",
    )
    for name in ("SESAM_API_KEY", "SESAM_CONFIG", "SESAM_SAM_CHECKPOINT", "SESAM_STUDENT_CHECKPOINT"):
        env.pop(name, None)
    base = f"http://127.0.0.1:{port}"
    with _running(serve_command("127.0.0.1", port), base, env, log, REPO):
        yield base


# -- request material -------------------------------------------------------------------------------
def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


SCENE = np.zeros((120, 160, 3), np.uint8)
SCENE[30:90, 40:120] = (200, 60, 40)
GOOD = _png(SCENE)
SMALL = _png(np.full((20, 30, 3), 90, np.uint8))
POINT = {"points": [[80, 60]], "labels": [1]}
WEAK = {"points": [{"x": 80, "y": 60, "class_id": 1}], "boxes": [{"class_id": 2, "box": [5, 5, 30, 30]}]}


def _bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming a huge size, with a tiny (truncated) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def _multipart(
    parts: list[tuple[str, str | None, bytes, str | None]], boundary: str = "xBOUNDARYx"
) -> tuple[bytes, str]:
    """A multipart body from (name, filename or None, content, content type or None) parts."""
    out = []
    for name, filename, content, ctype in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        out.append(head.encode() + b"\r\n" + content + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def form(files: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """httpx keyword arguments for a multipart request; values that are not str are JSON."""
    parts = []
    for name, value in (files or {}).items():
        for item in value if isinstance(value, list) else [value]:
            parts.append((name, "upload.png", item, "image/png"))
    for name, value in fields.items():
        parts.append((name, None, (value if isinstance(value, str) else json.dumps(value)).encode(), None))
    body, ctype = _multipart(parts)
    return {"content": body, "headers": {"content-type": ctype}}


def raw(body: bytes, ctype: str) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": ctype}}


def js(value: Any) -> dict[str, Any]:
    return raw(json.dumps(value).encode(), "application/json")


@dataclass(frozen=True)
class Case:
    name: str
    route: str
    request: Callable[[], dict[str, Any]]
    status: int
    field: str | None
    method: str = "POST"


def C(
    name: str,
    route: str,
    request: Callable[[], dict[str, Any]] | dict,
    status: int,
    field: str | None,
    method: str = "POST",
) -> Case:
    return Case(name, route, request if callable(request) else (lambda r=request: r), status, field, method)


ROUTES = ("/embed", "/predict", "/refine", "/segment", "/info")
FILE_FIELD = {"/embed": "image", "/predict": "image", "/refine": "image", "/segment": "images"}


def structural_cases() -> list[Case]:
    """What every route refuses the same way: bodies BentoML's parser would choke on."""
    cases = []
    for r in ROUTES:
        cases += [
            C(f"unknown json field {r}", r, js({"bogus": 1}), 400, "bogus"),
            C(f"json array body {r}", r, js([1, 2]), 400, "body"),
            C(f"broken json {r}", r, raw(b'{"a": ', "application/json"), 400, "body"),
            C(f"deep json {r}", r, raw(b"[" * 100_000 + b"]" * 100_000, "application/json"), 400, "body"),
            C(f"text/plain {r}", r, raw(b"hello", "text/plain"), 415, "Content-Type"),
            C(f"urlencoded unknown {r}", r, raw(b"a=1&b=2", "application/x-www-form-urlencoded"), 400, "a"),
            C(f"xml {r}", r, raw(b"<a/>", "application/xml"), 415, "Content-Type"),
            C(
                f"multipart without boundary {r}",
                r,
                raw(b"--x\r\n", "multipart/form-data"),
                400,
                "Content-Type",
            ),
            C(
                f"multipart garbage {r}",
                r,
                raw(b"--xBOUNDARYx\r\nnot a header line\r\n\r\n", "multipart/form-data; boundary=xBOUNDARYx"),
                400,
                "body",
            ),
            C(f"unknown binary part 'files' {r}", r, form({"files": GOOD}), 400, "files"),
            C(f"unknown binary part 'img' {r}", r, form({"img": b"\x89PNG\xff\xfe\x00\x01"}), 400, "img"),
            C(f"unknown text part {r}", r, form(colour="red"), 400, "colour"),
            C(
                f"declared body over the cap {r}",
                r,
                raw(b"x" * (MAX_BODY + 1), "application/octet-stream"),
                413,
                "body",
            ),
            C(f"GET {r}", r, {}, 405, None, method="GET"),
        ]
        if r in FILE_FIELD:
            f = FILE_FIELD[r]
            cases += [
                C(f"file field as a URL text part {r}", r, form(**{f: "http://127.0.0.1:9/x.png"}), 400, f),
                C(f"file field as a JSON URL {r}", r, js({f: "http://127.0.0.1:9/x.png"}), 400, f),
                C(
                    f"text field over the field cap {r}",
                    r,
                    form(
                        {f: GOOD},
                        **{
                            "prompts" if r == "/predict" else "weak" if r == "/refine" else "output": "x"
                            * (MAX_FIELD + 10)
                        },
                    )
                    if r != "/embed"
                    else form({f: GOOD}, bogus="x"),
                    413 if r != "/embed" else 400,
                    {"/predict": "prompts", "/refine": "weak", "/segment": "output", "/embed": "bogus"}[r],
                ),
            ]
    cases += [
        C("unknown route", "/nope", js({}), 404, None),
        C("unknown nested route", "/predict/x", js({}), 404, None),
    ]
    return cases


def embed_cases() -> list[Case]:
    return [
        C("embed: no image", "/embed", js({}), 400, "image"),
        C("embed: not an image", "/embed", form({"image": b"just some text"}), 400, "image"),
        C("embed: empty file", "/embed", form({"image": b""}), 400, "image"),
        C("embed: truncated png", "/embed", form({"image": GOOD[: len(GOOD) // 2]}), 400, "image"),
        C("embed: decompression bomb", "/embed", form({"image": _bomb_png()}), 413, "image"),
        C(
            "embed: over the pixel cap",
            "/embed",
            lambda: form({"image": _png(np.zeros((1100, 1000, 3), np.uint8))}),
            413,
            "image",
        ),
        C("embed: two images", "/embed", form({"image": [GOOD, GOOD]}), 400, "image"),
        C(
            "embed: binary text part",
            "/embed",
            lambda: raw(
                *_multipart([("image", "a.png", GOOD, "image/png"), ("image", None, b"\xff\xfe", None)])
            ),
            400,
            "image",
        ),
    ]


def predict_cases() -> list[Case]:
    def p(prompts: Any, **extra: Any) -> dict[str, Any]:
        return form({"image": GOOD}, prompts=prompts, **extra)

    bad_prompts = [
        ("not a list", {"a": 1}, "prompts"),
        ("a string", "not json at all", "prompts"),
        ("empty list", [], "prompts"),
        ("too many", [POINT] * (MAX_PROMPTS + 1), "prompts"),
        ("empty prompt", [{}], "prompts[0]"),
        ("unknown key", [POINT | {"colour": 1}], "prompts[0].colour"),
        ("label true", [{"points": [[10, 10]], "labels": [True]}], "prompts[0].labels[0]"),
        ("label string", [{"points": [[10, 10]], "labels": ["1"]}], "prompts[0].labels[0]"),
        ("label float", [{"points": [[10, 10]], "labels": [1.0]}], "prompts[0].labels[0]"),
        ("label 2", [{"points": [[10, 10]], "labels": [2]}], "prompts[0].labels[0]"),
        ("label -1", [{"points": [[10, 10]], "labels": [-1]}], "prompts[0].labels[0]"),
        ("points without labels", [{"points": [[10, 10]]}], "prompts[0]"),
        ("labels without points", [{"labels": [1]}], "prompts[0]"),
        ("length mismatch", [{"points": [[10, 10], [20, 20]], "labels": [1]}], "prompts[0]"),
        ("empty points", [{"points": [], "labels": []}], "prompts[0]"),
        ("3-d point", [{"points": [[10, 10, 1]], "labels": [1]}], "prompts[0].points[0]"),
        ("string point", [{"points": [["10", "10"]], "labels": [1]}], "prompts[0].points[0][0]"),
        ("bool point", [{"points": [[True, 10]], "labels": [1]}], "prompts[0].points[0][0]"),
        ("point outside", [{"points": [[10000, 10]], "labels": [1]}], "prompts[0]"),
        ("negative point", [{"points": [[-5, 10]], "labels": [1]}], "prompts[0]"),
        ("second prompt outside", [POINT, {"points": [[10, 500]], "labels": [1]}], "prompts[1]"),
        (
            "too many points",
            [{"points": [[10, 10]] * (MAX_POINTS + 1), "labels": [1] * (MAX_POINTS + 1)}],
            "prompts[0].points",
        ),
        ("box of 3", [{"box": [1, 2, 3]}], "prompts[0].box[3]"),
        ("zero-area box", [{"box": [10, 10, 10, 50]}], "prompts[0]"),
        ("inverted box", [{"box": [50, 50, 10, 10]}], "prompts[0]"),
        ("box outside", [{"box": [10, 10, 500, 100]}], "prompts[0]"),
        ("string box", [{"box": ["a", 1, 2, 3]}], "prompts[0].box[0]"),
        ("unknown mask input", [{"mask_input_id": "0" * 32}], "prompts[0].mask_input_id"),
        ("long mask input id", [{"mask_input_id": "0" * 500}], "prompts[0].mask_input_id"),
    ]
    status = {"unknown mask input": 404}
    cases = [
        C(f"predict: prompts {name}", "/predict", (lambda v=value: p(v)), status.get(name, 400), field)
        for name, value, field in bad_prompts
    ]
    cases += [
        C(
            "predict: NaN point",
            "/predict",
            lambda: form({"image": GOOD}, prompts='[{"points": [[NaN, 5]], "labels": [1]}]'),
            400,
            "prompts[0]",
        ),
        C(
            "predict: Infinity box",
            "/predict",
            lambda: form({"image": GOOD}, prompts='[{"box": [0, 0, Infinity, 5]}]'),
            400,
            "prompts[0]",
        ),
        C("predict: no prompts", "/predict", form({"image": GOOD}), 400, "prompts"),
        C(
            "predict: image and image_id",
            "/predict",
            form({"image": GOOD}, prompts=[POINT], image_id="abc"),
            400,
            "image",
        ),
        C("predict: neither image nor id", "/predict", js({"prompts": [POINT]}), 400, "image"),
        C(
            "predict: unknown image_id",
            "/predict",
            js({"prompts": [POINT], "image_id": "f" * 64}),
            404,
            "image_id",
        ),
        C("predict: numeric image_id", "/predict", js({"prompts": [POINT], "image_id": 5}), 400, "image_id"),
        C(
            "predict: multimask yes",
            "/predict",
            form({"image": GOOD}, prompts=[POINT], multimask="yes"),
            400,
            "multimask",
        ),
        C(
            "predict: multimask 1",
            "/predict",
            js({"prompts": [POINT], "image_id": "a", "multimask": 1}),
            400,
            "multimask",
        ),
        C(
            "predict: mask_format jpeg",
            "/predict",
            form({"image": GOOD}, prompts=[POINT], mask_format="jpeg"),
            400,
            "mask_format",
        ),
        C(
            "predict: not an image",
            "/predict",
            form({"image": b"GIF89a junk"}, prompts=[POINT]),
            400,
            "image",
        ),
        C("predict: bomb", "/predict", form({"image": _bomb_png()}, prompts=[POINT]), 413, "image"),
        C(
            "predict: deep prompts",
            "/predict",
            lambda: form({"image": GOOD}, prompts="[" * 20_000 + "]" * 20_000),
            400,
            "prompts",
        ),
        C(
            "predict: prompts as a file part of binary",
            "/predict",
            lambda: raw(
                *_multipart(
                    [("image", "a.png", GOOD, "image/png"), ("prompts", "p.bin", b"\x00\xff\xfe", None)]
                )
            ),
            400,
            "prompts",
        ),
    ]
    return cases


def refine_cases() -> list[Case]:
    def r(weak: Any = WEAK, files: dict | None = None, **extra: Any) -> dict[str, Any]:
        return form(files or {"image": GOOD}, weak=weak, **extra)

    def pt(**kw: Any) -> dict:
        return {"points": [{"x": 10, "y": 10, "class_id": 1} | kw]}

    def box(b: list) -> dict:
        return {"boxes": [{"class_id": 1, "box": b}]}

    bad_weak = [
        ("a list", [1, 2], "weak"),
        ("unknown key", WEAK | {"colour": 1}, "weak.colour"),
        ("class id true", pt(class_id=True), "weak.points[0].class_id"),
        ("class id string", pt(class_id="3"), "weak.points[0].class_id"),
        ("class id float", pt(class_id=1.5), "weak.points[0].class_id"),
        ("class id 255", pt(class_id=255), "weak.points[0].class_id"),
        ("class id -1", pt(class_id=-1), "weak.points[0].class_id"),
        ("point x string", pt(x="10"), "weak.points[0].x"),
        ("point unknown key", pt(z=1), "weak.points[0].z"),
        ("point outside", pt(x=5000), "weak"),
        (
            "scribble width 0",
            {"scribbles": [{"class_id": 1, "width": 0, "points": [[1, 1], [5, 5]]}]},
            "weak.scribbles[0].width",
        ),
        (
            "scribble width huge",
            {"scribbles": [{"class_id": 1, "width": 100_000, "points": [[1, 1], [5, 5]]}]},
            "weak.scribbles[0].width",
        ),
        (
            "scribble without points",
            {"scribbles": [{"class_id": 1, "points": []}]},
            "weak.scribbles[0].points",
        ),
        (
            "scribble points over the cap",
            {"scribbles": [{"class_id": 1, "points": [[1, 1]] * (MAX_SCRIBBLE_POINTS + 1)}]},
            "weak.scribbles[0].points",
        ),
        (
            "scribble points over the total",
            {"scribbles": [{"class_id": 1, "points": [[1, 1]] * 150}] * 2},
            "weak",
        ),
        ("too many labels", {"points": [{"x": 1, "y": 1, "class_id": 1}] * (MAX_WEAK + 1)}, "weak.points"),
        ("box of 3", box([1, 2, 3]), "weak.boxes[0].box[3]"),
        ("zero-area box", box([10, 10, 10, 20]), "weak.boxes[0]"),
        ("inverted box", box([20, 20, 10, 10]), "weak.boxes[0]"),
        ("box outside", box([10, 10, 400, 40]), "weak"),
        ("size mismatch", WEAK | {"width": 999, "height": 999}, "weak"),
        ("version 7", WEAK | {"version": 7}, "weak.version"),
        ("instances 1", WEAK | {"instances": 1}, "weak.instances"),
        ("tags only for sesam", {"tags": [1, 2]}, "weak"),
        ("nothing", {}, "weak"),
    ]
    cases = [C(f"refine: weak {n}", "/refine", (lambda v=v: r(v)), 400, f) for n, v, f in bad_weak]
    cases += [
        C("refine: method unknown", "/refine", r(method="magic"), 400, "method"),
        C("refine: options unknown key", "/refine", r(options={"colour": 1}), 400, "options"),
        C("refine: options a list", "/refine", r(options=[1]), 400, "options"),
        C(
            "refine: points_per_side string",
            "/refine",
            r(method="sepl", options={"points_per_side": "100"}),
            400,
            "options.points_per_side",
        ),
        C(
            "refine: points_per_side float",
            "/refine",
            r(method="sepl", options={"points_per_side": 100.0}),
            400,
            "options.points_per_side",
        ),
        C(
            "refine: points_per_side bool",
            "/refine",
            r(method="sepl", options={"points_per_side": True}),
            400,
            "options.points_per_side",
        ),
        C(
            "refine: points_per_side over the cap",
            "/refine",
            r(method="sepl", options={"points_per_side": 64}),
            400,
            "options.points_per_side",
        ),
        C(
            "refine: option names a server path",
            "/refine",
            r(method="sepl", options={"cam": "/etc/passwd"}),
            400,
            "options.cam",
        ),
        C("refine: num_classes 0", "/refine", r(num_classes=0), 400, "num_classes"),
        C("refine: num_classes float", "/refine", r(num_classes=1.5), 400, "num_classes"),
        C("refine: class over num_classes", "/refine", r(num_classes=2), 400, "weak"),
        C(
            "refine: coarse mask not a png",
            "/refine",
            form({"image": GOOD, "coarse_mask": b"nope"}, weak=WEAK),
            400,
            "coarse_mask",
        ),
        C(
            "refine: coarse mask wrong size",
            "/refine",
            lambda: form({"image": GOOD, "coarse_mask": _png(np.zeros((10, 10), np.uint8))}, weak=WEAK),
            400,
            "coarse_mask",
        ),
        C(
            "refine: two coarse masks",
            "/refine",
            lambda: form({"image": GOOD, "coarse_mask": [SMALL, SMALL]}, weak=WEAK),
            400,
            "coarse_mask",
        ),
        C("refine: label_format jpeg", "/refine", r(label_format="jpeg"), 400, "label_format"),
        C("refine: no image", "/refine", form(weak=WEAK), 400, "image"),
        C("refine: not an image", "/refine", form({"image": b"%PDF-1.4"}, weak=WEAK), 400, "image"),
        C("refine: bomb", "/refine", form({"image": _bomb_png()}, weak=WEAK), 413, "image"),
    ]
    return cases


def segment_cases() -> list[Case]:
    return [
        C("segment: no images", "/segment", js({}), 400, "images"),
        C("segment: part 'image' (singular)", "/segment", form({"image": GOOD}), 400, "image"),
        C(
            "segment: too many images",
            "/segment",
            form({"images": [SMALL] * (MAX_IMAGES + 1)}),
            400,
            "images",
        ),
        C("segment: not an image", "/segment", form({"images": b"text"}), 400, "images[0]"),
        C("segment: second image broken", "/segment", form({"images": [SMALL, b"text"]}), 400, "images[1]"),
        C("segment: bomb", "/segment", form({"images": _bomb_png()}), 413, "images[0]"),
        C("segment: output masks", "/segment", form({"images": SMALL}, output="masks"), 400, "output"),
        C(
            "segment: instances from a semantic student",
            "/segment",
            form({"images": SMALL}, output="instances"),
            400,
            "output",
        ),
        C(
            "segment: label_format jpeg",
            "/segment",
            form({"images": SMALL}, label_format="jpeg"),
            400,
            "label_format",
        ),
        C(
            "segment: mask_format png",
            "/segment",
            form({"images": SMALL}, mask_format="png"),
            400,
            "mask_format",
        ),
        C("segment: min_score 2", "/segment", form({"images": SMALL}, min_score=2), 400, "min_score"),
        C("segment: min_score -1", "/segment", form({"images": SMALL}, min_score=-1), 400, "min_score"),
        C("segment: min_score string", "/segment", js({"min_score": "0.5"}), 400, "min_score"),
        C("segment: min_score true", "/segment", form({"images": SMALL}, min_score=True), 400, "min_score"),
    ]


GROUPS = {
    "structural": structural_cases(),
    "embed": embed_cases(),
    "predict": predict_cases(),
    "refine": refine_cases(),
    "segment": segment_cases(),
}
ALL = [(group, case) for group, cases in GROUPS.items() for case in cases]


def test_suite_is_large_enough() -> None:
    assert len(ALL) >= 150, len(ALL)
    assert len({case.name for _, case in ALL}) == len(ALL), "case names must be unique"


def check_error(response: httpx.Response, status: int, field: str | None) -> dict:
    """The whole error contract for one answer; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "field"}, error
    assert error["code"] == CODES[status]
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error["field"] == field, error
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text[:500])
    return error


@pytest.mark.parametrize(("group", "case"), ALL, ids=[f"{g}: {c.name}" for g, c in ALL])
def test_bad_input(url: str, group: str, case: Case) -> None:
    kwargs = case.request()
    response = httpx.request(case.method, url + case.route, timeout=TIMEOUT_S, **kwargs)
    check_error(response, case.status, case.field)
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200


@pytest.mark.parametrize("group", list(GROUPS))
def test_server_healthy_after_group(url: str, group: str) -> None:
    """Runs after each group's cases (pytest keeps file order): every route still answers."""
    ok = httpx.post(f"{url}/predict", timeout=TIMEOUT_S, **form({"image": GOOD}, prompts=[POINT]))
    assert ok.status_code == 200, ok.text[:300]
    assert httpx.post(f"{url}/embed", timeout=TIMEOUT_S, **form({"image": GOOD})).status_code == 200
    refined = httpx.post(f"{url}/refine", timeout=TIMEOUT_S, **form({"image": GOOD}, weak=WEAK))
    assert refined.status_code == 200, refined.text[:300]
    assert httpx.post(f"{url}/segment", timeout=TIMEOUT_S, **form({"images": SMALL})).status_code == 200
    info = httpx.post(f"{url}/info", timeout=TIMEOUT_S)
    assert info.status_code == 200
    for leak in LEAKS:
        assert leak not in info.text, leak


def _image_bytes(fmt: str, image: Image.Image, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    img = Image.fromarray(np.tile(np.arange(160, dtype=np.uint8), (120, 1))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return _image_bytes("JPEG", img, exif=exif)


IMAGE_KINDS = {
    "webp": (lambda: _image_bytes("WEBP", Image.fromarray(SCENE)), (120, 160)),
    "tiff": (lambda: _image_bytes("TIFF", Image.fromarray(SCENE)), (120, 160)),
    "png16": (
        lambda: _image_bytes("PNG", Image.fromarray(SCENE[..., 0].astype(np.uint16) * 257)),
        (120, 160),
    ),
    "gray": (lambda: _image_bytes("PNG", Image.fromarray(SCENE[..., 0])), (120, 160)),
    "cmyk": (lambda: _image_bytes("JPEG", Image.fromarray(SCENE).convert("CMYK")), (120, 160)),
    "exif": (_exif_rotated, (160, 120)),
}


@pytest.mark.parametrize("kind", list(IMAGE_KINDS))
def test_image_kinds_are_served(url: str, kind: str) -> None:
    """WebP, TIFF, 16-bit, grayscale and CMYK images work on /embed; EXIF rotation is applied."""
    make, (h, w) = IMAGE_KINDS[kind]
    mime = "application/octet-stream"  # what clients send for types they do not know
    body, ctype = _multipart([("image", f"x.{kind}", make(), mime)])
    response = httpx.post(f"{url}/embed", content=body, headers={"content-type": ctype}, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text[:300]
    assert (response.json()["height"], response.json()["width"]) == (h, w)


def test_503_and_504_follow_the_contract() -> None:
    """The lane refusals are built by the same code (checked in-process: a server cannot be made busy
    on demand without timing assumptions; the load benchmark provokes them for real)."""
    from serving.errors import ApiError, normalize_body

    busy = ApiError(503, "busy: the predict lane is full; retry after 2 s", None, {"Retry-After": "2"})
    body = normalize_body(503, str(busy).encode(), "application/json")
    assert body == {"error": {"code": "busy", "message": busy.message, "field": None}}
    late = normalize_body(504, json.dumps([{"error": "deadline exceeded: /x/y.png took 3 s"}]).encode())
    assert late["error"]["code"] == "deadline_exceeded" and "<path>" in late["error"]["message"]
    crash = normalize_body(500, b"Traceback (most recent call last): ...")
    assert "Traceback" not in crash["error"]["message"]


@pytest.mark.parametrize("status", [503, 504])
def test_the_services_own_503_and_504_keep_their_reason_through_bentoml(status: int) -> None:
    """BentoML answers any 5xx exception a route raises with a generic text in place of its message
    (`_bentoml_impl/server/app.py`); the guard middleware puts the service's own 503 / 504 body back
    (why, and when to retry), for a route run in a worker thread as BentoML runs sync routes. The
    app below does what BentoML does with the exception."""
    import anyio

    from serving.errors import ApiError
    from serving.middleware import GuardMiddleware

    message = "deadline exceeded: ran 0.1 s past its deadline" if status == 504 else "busy: retry after 2 s"

    def route() -> None:
        raise ApiError(status, message)

    async def bentoml_like(scope, receive, send) -> None:
        try:
            await anyio.to_thread.run_sync(route)
        except ApiError as exc:
            text = b"An unexpected error has occurred, please check the server log."
            await send({"type": "http.response.start", "status": exc.error_code.value, "headers": []})
            await send({"type": "http.response.body", "body": text})

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=GuardMiddleware(bentoml_like))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/predict", json={})

    response = anyio.run(call)
    assert response.status_code == status
    assert response.json() == {"error": {"code": CODES[status], "message": message, "field": None}}
    if status == 503:
        assert response.headers["retry-after"] == "2"


def test_paths_are_scrubbed() -> None:
    from serving.errors import scrub

    assert (
        scrub("image: cannot identify image file '/tmp/abc/x.png'")
        == "image: cannot identify image file '<path>'"
    )
    assert scrub("weak: 3 > 2 and 1/2 of it") == "weak: 3 > 2 and 1/2 of it"
    assert scrub("at /work/main/models/x.py line 3") == "at <path> line 3"
    # routes are not server paths (the 404 of an evicted image_id used to read "POST the image to <path>")
    assert (
        scrub("image_id: 'x' is unknown; POST the image to /embed")
        == "image_id: 'x' is unknown; POST the image to /embed"
    )
