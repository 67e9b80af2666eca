"""A thin Python client for the service, for edge apps and batch jobs.

    from serving.client import SesamClient
    client = SesamClient("http://127.0.0.1:3000", api_key=None)
    image_id = client.embed("street.jpg")["image_id"]
    out = client.predict([{"points": [[320, 240]], "labels": [1]}], image_id=image_id)
    masks = client.decode_masks(out)[0]             # 3xHxW bool for the first prompt
    labels = client.segment_labels("street.jpg")   # HxW uint8 class ids from a semantic student
    masks, found = client.segment_instances("people.jpg")  # from an instance student

Images may be a path, encoded bytes or an HxWx3 uint8 array (sent as PNG). Connection errors,
timeouts and 500 / 502 / 503 / 504 answers are retried with exponential backoff (at most
`MAX_BACKOFF_S` between tries, at least what a Retry-After asks, up to 60 s); 4xx answers raise
`ServiceError` at once with the server's message (they would fail again). `check()` says, before a
batch, why a URL is not a usable sesam service (no scheme, unreachable, not ready, wrong key).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from models.labels.schema import WeakLabels
from serving.codec import decode_instances, decode_labels, decode_png, decode_polygons, decode_rle

RETRY_STATUS = frozenset({500, 502, 503, 504})
MAX_BACKOFF_S = 30.0  # the longest wait between two tries, whatever `retries` is


class ServiceError(RuntimeError):
    """The service refused a request (4xx) or kept failing after the retries."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def image_bytes(image: str | Path | bytes | np.ndarray) -> bytes:
    """Encoded image bytes: a file's content, bytes as given, or an array as lossless PNG."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
        return buf.getvalue()
    return Path(image).read_bytes()


def image_part(image: str | Path | bytes | np.ndarray) -> tuple[str, bytes, str]:
    """(filename, bytes, MIME type) for a multipart upload; the type is read from the bytes."""
    data = image_bytes(image)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "png").lower()
    except Exception:  # let the server name what is wrong with it
        fmt = "png"
    return f"image.{fmt}", data, Image.MIME.get(fmt.upper(), f"image/{fmt}")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # the service's one error shape (serving.errors)
        field = error.get("field")
        return f"{error.get('message')}" + (f" [field: {field}]" if field else "")
    return str(error if error is not None else body)[:500]


def _json_or_empty(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class SesamClient:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SesamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------
    def post(self, route: str, files: dict | list | None = None, data: dict | None = None) -> dict[str, Any]:
        """POST with retries on connection errors / 5xx: multipart when files are sent (non-string
        fields JSON-encoded), else a JSON body. None values are left out (the server's default)."""
        fields = {k: v for k, v in (data or {}).items() if v is not None}
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        last, last_status, wait_s = "no attempt", None, 0.0
        for attempt in range(self.retries + 1):
            if attempt:  # exponential backoff (capped), at least what the last Retry-After asked for
                time.sleep(max(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S), wait_s))
                wait_s = 0.0
            try:
                if files:
                    response = self.http.post(route, files=files, data=form)
                else:
                    response = self.http.post(route, json=fields)
            except httpx.TransportError as exc:  # connection refused / reset, timeouts
                last, last_status = f"{type(exc).__name__}: {exc}", None
                continue
            if response.status_code in RETRY_STATUS:
                last, last_status = (
                    f"{response.status_code}: {_error_message(response)}",
                    response.status_code,
                )
                try:
                    wait_s = min(float(response.headers.get("retry-after", 0)), 60.0)
                except ValueError:
                    wait_s = 0.0
                continue
            if response.status_code >= 400:
                raise ServiceError(response.status_code, _error_message(response))
            try:
                return response.json()
            except ValueError:
                raise ServiceError(
                    response.status_code, f"{self.url}{route} answered no JSON: not a sesam service?"
                ) from None
        raise ServiceError(
            last_status, f"{self.url}{route} failed after {self.retries + 1} attempts ({last})"
        )

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def check(self, timeout_s: float = 10.0) -> None:
        """Raise a ValueError saying why `url` is not a usable sesam service: no http(s) scheme,
        not reachable, not ready (GET /readyz), or the API key refused (POST /info, the one check
        of the key before a batch); each within `timeout_s`."""
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"{self.url}: give the URL with its scheme, e.g. http://{self.url.split('://')[-1]}"
            )
        try:
            status = self.http.get("/readyz", timeout=timeout_s).status_code
        except httpx.TransportError as exc:
            raise ValueError(f"{self.url}: not reachable ({type(exc).__name__}: {exc})") from None
        except httpx.InvalidURL as exc:
            raise ValueError(f"{self.url}: not a valid URL ({exc})") from None
        if status != 200:
            raise ValueError(f"{self.url}: not ready (GET /readyz answered {status})")
        try:
            response = self.http.post("/info", json={}, timeout=timeout_s)
        except httpx.TransportError as exc:
            raise ValueError(f"{self.url}: POST /info failed ({type(exc).__name__}: {exc})") from None
        if response.status_code == 401:
            raise ValueError(f"{self.url}: the API key is missing or wrong ({_error_message(response)})")
        if response.status_code != 200 or "backend" not in _json_or_empty(response):
            raise ValueError(f"{self.url}: not a sesam service (POST /info answered {response.status_code})")

    # -- routes ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self.post("/info")

    def embed(self, image: str | Path | bytes | np.ndarray) -> dict[str, Any]:
        return self.post("/embed", files={"image": image_part(image)})

    def predict(
        self,
        prompts: Sequence[dict],
        image: str | Path | bytes | np.ndarray | None = None,
        image_id: str | None = None,
        multimask: bool = True,
        mask_format: str = "rle",
    ) -> dict[str, Any]:
        """Prompts are dicts: points [[x, y]], labels [1|0], box [x0, y0, x1, y1], mask_input_id."""
        data = {
            "prompts": list(prompts),
            "image_id": image_id,
            "multimask": multimask,
            "mask_format": mask_format,
        }
        files = {"image": image_part(image)} if image is not None else None
        if files is None:
            return self.post("/predict", data=data)
        return self.post("/predict", files=files, data=data)

    def refine(
        self,
        image: str | Path | bytes | np.ndarray,
        weak: WeakLabels | dict,
        method: str = "sesam",
        options: dict | None = None,
        label_format: str = "png",
        num_classes: int | None = None,
    ) -> dict[str, Any]:
        """Weak labels (a WeakLabels, its coarse mask included, or a schema-v1 dict) -> refined map."""
        files = {"image": image_part(image)}
        if isinstance(weak, WeakLabels):
            if weak.coarse is not None:
                buf = io.BytesIO()
                Image.fromarray(weak.coarse.astype(np.uint8), mode="L").save(buf, format="PNG")
                files["coarse_mask"] = ("coarse.png", buf.getvalue(), "image/png")
            weak = weak.to_json()
        data = {
            "weak": weak,
            "method": method,
            "options": options or {},
            "label_format": label_format,
            "num_classes": num_classes,
        }
        return self.post("/refine", files=files, data=data)

    def refine_labels(
        self, image: str | Path | bytes | np.ndarray, weak: WeakLabels | dict, **kw: Any
    ) -> np.ndarray:
        return decode_labels(self.refine(image, weak, **kw)["labels"])

    def segment(
        self,
        images: str | Path | bytes | np.ndarray | Sequence[str | Path | bytes | np.ndarray],
        output: str = "auto",
        label_format: str = "png",
        mask_format: str = "rle",
        min_score: float | None = None,
    ) -> dict[str, Any]:
        """One or more images through the served student: {"task", "class_names", "results": [...]}
        with a label map (semantic) or instances (instance student) per image."""
        single = isinstance(images, (str, Path, bytes, np.ndarray))
        parts = [("images", image_part(i)) for i in ([images] if single else images)]
        data = {
            "output": output,
            "label_format": label_format,
            "mask_format": mask_format,
            "min_score": min_score,
        }
        return self.post("/segment", files=parts, data=data)

    def segment_labels(self, image: str | Path | bytes | np.ndarray) -> np.ndarray:
        """HxW uint8 class ids from a semantic student."""
        return decode_labels(self.segment(image, output="labels")["results"][0]["labels"])

    def segment_instances(
        self, image: str | Path | bytes | np.ndarray, min_score: float | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(masks KxHxW bool, the instances' class / score / box) from an instance student."""
        result = self.segment(image, output="instances", min_score=min_score)["results"][0]
        masks = decode_instances(result["instances"], result["height"], result["width"], "rle")
        return masks, [{k: v for k, v in i.items() if k != "mask"} for i in result["instances"]]

    # -- decoding -------------------------------------------------------------------------------
    @staticmethod
    def decode_masks(response: dict[str, Any]) -> list[np.ndarray]:
        """A /predict answer -> one CxHxW bool array per prompt, whatever the mask format."""
        h, w, fmt = response["height"], response["width"], response["mask_format"]
        decode = {
            "rle": decode_rle,
            "png": decode_png,
            "polygons": lambda p: decode_polygons(p, h, w),
        }[fmt]
        return [np.stack([decode(m) for m in pred["masks"]]) for pred in response["predictions"]]
