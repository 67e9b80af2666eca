"""Drive a running Label Studio through its SDK against an ML backend, for tests/test_label_studio_live.py.

Run with the Label Studio venv (`.venv-ls/bin/python tests/label_studio_driver.py ...`), never imported
by the project's own venv: the label-studio-sdk pins numpy and opencv below what the project uses.

Steps, each as the Label Studio UI would do it:
1. create a project whose label config has BrushLabels, KeyPointLabels and RectangleLabels on one image;
2. upload the image file (multipart import, so the task's image is `/data/upload/<project>/<name>`);
3. connect the ML backend (interactive on);
4. "Retrieve predictions" (`POST /api/dm/actions?id=retrieve_tasks_predictions&project=P`) and read the
   task's predictions back;
5. a smart keypoint and a smart rectangle, each through `POST /api/ml/<id>/interactive-annotating`;
6. the keypoint's mask accepted as an annotation (Label Studio sends ANNOTATION_CREATED to the backend's
   /webhook), then "Start training" (START_TRAINING to /webhook).

Every brush mask met on the way is decoded (`decode_rle(rle).reshape(H, W, 4)[:, :, 3]`) into
`<out>/<name>.npy` (uint8, 0 or 255), and `<out>/result.json` describes what was sent and answered, brush
RLEs replaced by the .npy file names. A step that fails is recorded there (`errors`) and the driver goes
on with the next one; it exits 0 when every step worked and 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from xml.sax.saxutils import quoteattr

import httpx
import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

# BrushLabels: CamVid's class names (the shipped student's, title-cased) plus one the student does not know
BRUSH_LABELS = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "Sign_Symbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
    "Unlabelled",
]
# the smart tools' labels: "Car" has a brush label of the same value, "Object" has none
KEYPOINT_LABELS = ["Car", "Pedestrian", "Object"]
RECTANGLE_LABELS = ["Car", "Pedestrian", "Object"]


def label_config() -> str:
    def labels(values: list[str]) -> str:
        return "".join(f"<Label value={quoteattr(v)}/>" for v in values)

    return (
        "<View>"
        '<Image name="image" value="$image" zoom="true"/>'
        f'<BrushLabels name="brush" toName="image">{labels(BRUSH_LABELS)}</BrushLabels>'
        f'<KeyPointLabels name="point" toName="image" smart="true">{labels(KEYPOINT_LABELS)}</KeyPointLabels>'
        f'<RectangleLabels name="box" toName="image" smart="true">{labels(RECTANGLE_LABELS)}</RectangleLabels>'
        "</View>"
    )


class Recorder:
    """Collects what the run met: decoded brush masks (as .npy files) and errors."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.errors: list[dict] = []
        self.masks = 0

    def brushes(self, results: list[dict], prefix: str) -> list[dict]:
        """Results with each brush RLE decoded to `<prefix>_<i>.npy` (and replaced by that name)."""
        kept = []
        for i, item in enumerate(results):
            item = json.loads(json.dumps(item))  # a deep copy
            value = item.get("value") or {}
            if item.get("type") == "brushlabels" and value.get("format") == "rle" and "rle" in value:
                rle = value.pop("rle")
                value["rle_length"] = len(rle)
                try:
                    h, w = int(item["original_height"]), int(item["original_width"])
                    mask = decode_rle(rle).reshape(h, w, 4)[:, :, 3]
                except Exception as exc:  # recorded for the test to report
                    value["decode_error"] = f"{type(exc).__name__}: {exc}"
                else:
                    name = f"{prefix}_{i}.npy"
                    np.save(self.out / name, np.ascontiguousarray(mask, dtype=np.uint8))
                    value["npy"] = name
                    self.masks += 1
            kept.append(item)
        return kept

    def step(self, name: str, report: dict, fn) -> None:
        started = time.monotonic()
        try:
            report[name] = fn()
        except Exception as exc:  # one failed step must not hide the others
            self.errors.append(
                {
                    "step": name,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            )
        report.setdefault("seconds", {})[name] = round(time.monotonic() - started, 2)


def percent(value: float, size: int) -> float:
    return value / size * 100


def keypoint_region(x: float, y: float, w: int, h: int, label: str) -> dict:
    """A smart keypoint as the Label Studio front end sends it (percent of the image)."""
    return {
        "id": "sesam-kp-1",
        "from_name": "point",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "is_positive": True,
        "value": {"x": percent(x, w), "y": percent(y, h), "width": 0.5, "keypointlabels": [label]},
    }


def rectangle_region(box: list[float], w: int, h: int, label: str) -> dict:
    x0, y0, x1, y1 = box
    return {
        "id": "sesam-box-1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "is_positive": True,
        "value": {
            "x": percent(x0, w),
            "y": percent(y0, h),
            "width": percent(x1 - x0, w),
            "height": percent(y1 - y0, h),
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def run(args: argparse.Namespace, report: dict) -> None:
    """The steps, recorded into `report` as they go (a failure leaves what came before)."""
    out = Path(args.out)
    rec = Recorder(out)
    rec.errors = report["errors"]
    report.update(label_config=label_config(), brush_labels=BRUSH_LABELS)
    with Image.open(args.image) as img:
        w, h = img.size
    report["image"] = {"path": str(args.image), "width": w, "height": h}

    ls = LabelStudio(base_url=args.ls_url, api_key=args.token, timeout=args.timeout)
    http = httpx.Client(
        base_url=args.ls_url, headers={"Authorization": f"Token {args.token}"}, timeout=args.timeout
    )

    project = ls.projects.create(title="sesam integration", label_config=label_config())
    report["project"] = project.id

    # the file itself, as the UI's import dialog sends it: the task's URL becomes /data/upload/...
    with open(args.image, "rb") as f:
        answer = http.post(
            f"/api/projects/{project.id}/import",
            params={"commit_to_project": "true", "return_task_ids": "true"},
            files={"file": (Path(args.image).name, f, "image/jpeg")},
        )
    answer.raise_for_status()
    report["import"] = answer.json()
    task_ids = report["import"].get("task_ids") or []
    if len(task_ids) != 1:
        raise RuntimeError(f"expected one task from the import, got: {report['import']}")
    task = ls.tasks.get(task_ids[0])
    report["task"] = {"id": task.id, "data": task.data}

    backend = ls.ml.create(
        project=project.id, url=args.backend_url, title="sesam", is_interactive=True, timeout=args.timeout
    )
    report["ml_backend"] = {
        "id": backend.id,
        "state": str(backend.state),
        "model_version": backend.model_version,
    }

    def retrieve() -> dict:
        answer = http.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project.id},
            json={"selectedItems": {"all": False, "included": [task.id]}},
        )
        body = answer.json() if answer.content else None
        deadline = time.monotonic() + args.timeout
        predictions = []
        while time.monotonic() < deadline:  # synchronous without Redis, but poll in case it is queued
            predictions = ls.predictions.list(task=task.id)
            if predictions:
                break
            time.sleep(0.5)
        stored = []
        for n, p in enumerate(predictions):
            stored.append(
                {
                    "id": p.id,
                    "model_version": p.model_version,
                    "score": p.score,
                    "result": rec.brushes(list(p.result or []), f"retrieved_{n}"),
                }
            )
        return {"status": answer.status_code, "answer": body, "predictions": stored}

    def interactive(region: dict, prefix: str) -> dict:
        raw = ls.ml.with_raw_response.predict_interactive(
            backend.id, task=task.id, context={"result": [region]}
        )
        body = raw.response.json()
        data = body.get("data", body) if isinstance(body, dict) else body
        results = (data or {}).get("result", []) if isinstance(data, dict) else []
        keys = sorted(data) if isinstance(data, dict) else None
        accepted[prefix] = results
        return {
            "sent": region,
            "status": raw.response.status_code,
            "answer_keys": sorted(body) if isinstance(body, dict) else None,
            "data_keys": keys,
            "result": rec.brushes(results, prefix),
        }

    accepted: dict[str, list] = {}  # each interactive answer as Label Studio returned it

    def annotate() -> dict:
        """The annotator accepts the keypoint's mask: Label Studio sends ANNOTATION_CREATED to the
        backend's /webhook (the one it made when the backend was connected)."""
        result = [r for r in accepted.get("keypoint", []) if r.get("type") == "brushlabels"]
        if not result:
            raise RuntimeError("no brush result from the keypoint step to accept")
        made = ls.annotations.create(task.id, result=result, was_cancelled=False, ground_truth=False)
        hooks = http.get("/api/webhooks/", params={"project": project.id}).json()
        return {
            "id": made.id,
            "webhooks": [{"url": h.get("url"), "is_active": h.get("is_active")} for h in hooks],
        }

    def train() -> dict:
        """Start training: Label Studio 1.23 sends START_TRAINING to /webhook (to /train, with the
        annotated tasks, where its feature flag is off)."""
        raw = ls.ml.with_raw_response.train(backend.id)
        return {"status": raw.response.status_code, "answer": raw.response.text[:2000]}

    rec.step("retrieve", report, retrieve)
    x, y = args.keypoint
    rec.step(
        "keypoint", report, lambda: interactive(keypoint_region(x, y, w, h, args.keypoint_label), "keypoint")
    )
    rec.step(
        "rectangle",
        report,
        lambda: interactive(rectangle_region(args.box, w, h, args.box_label), "rectangle"),
    )
    rec.step("annotate", report, annotate)
    rec.step("train", report, train)
    # the backends list as LS shows it afterwards (its state says whether /health and /setup worked)
    rec.step("ml_backends", report, lambda: [m.model_dump() for m in ls.ml.list(project=project.id)])
    report["masks"] = rec.masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ls-url", required=True, help="Label Studio, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="a legacy API token (Authorization: Token ...)")
    parser.add_argument("--backend-url", required=True, help="the ML backend URL Label Studio calls")
    parser.add_argument("--image", required=True, help="the image file to upload as the one task")
    parser.add_argument("--out", required=True, help="folder for result.json and the decoded masks")
    parser.add_argument("--keypoint", type=float, nargs=2, required=True, metavar=("X", "Y"), help="pixels")
    parser.add_argument("--keypoint-label", default="Car")
    parser.add_argument(
        "--box", type=float, nargs=4, required=True, metavar=("X0", "Y0", "X1", "Y1"), help="pixels"
    )
    parser.add_argument("--box-label", default="Object")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per Label Studio call")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"errors": []}
    try:
        run(args, report)
    except Exception as exc:  # the steps before the first one that can go on alone: the test reads why
        error = f"{type(exc).__name__}: {exc}"
        report["errors"].append(
            {"step": "setup", "error": error, "traceback": traceback.format_exc()[-3000:]}
        )
    (out / "result.json").write_text(json.dumps(report, indent=1, default=str))
    for error in report["errors"]:
        print(f"{error['step']}: {error['error']}", file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
