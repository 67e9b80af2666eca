"""Click-to-answer latency where people label: the Label Studio backend (`/ls/predict`) and the
click-to-mask page's route (`/predict` on a cached embedding with the last click's logits).

For each engine (default: the weight-free classical prior, and SAM ViT-B exported to ONNX with
random weights — speed does not depend on the weights — run by ONNX Runtime) it starts `bentoml
serve` and plays one labeling session of `--clicks` clicks on a Penn-Fudan pedestrian: a positive
click inside the person, then alternately negative (outside) and positive (inside), each click's
prompt holding every click so far, as a person clicks (each path on a fresh server, so nothing is cached before its first click):

- the baseline: the same engine in this process, `engine.predict` on a cached embedding (no HTTP);
- the page: `/predict` with the image_id, all clicks, and `mask_input_id` from the answer before
  (multimask on the first click only, as the page does);
- Label Studio: `/ls/predict` with the task and a context holding the clicks as keypoints, the
  image read from a local file server standing in for Label Studio's with the project's token
  (the first click of a session pays the download and the embedding; the others reuse both).

Prints p50 / p90 per path (the first click, which embeds, apart); writes
benchmarks/results/labeling_latency.md. The browser's own click-to-overlay time is measured by
tests/test_ui_browser.py (docs/labeling.md).

Run: `python benchmarks/labeling_latency.py [--clicks 20] [--engines classical onnx]`
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from serve_load import free_port, start_server
from tables import markdown_table, write_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token"
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
    '<Label value="person"/></BrushLabels><KeyPointLabels name="point" toName="image" smart="true">'
    '<Label value="person"/></KeyPointLabels></View>'
)


def session(mask: np.ndarray, clicks: int, seed: int = 0) -> tuple[list[list[float]], list[int]]:
    """`clicks` clicks: positive inside the mask, then negative outside / positive inside in turn."""
    rng = np.random.default_rng(seed)
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    points, labels = [], []
    for k in range(clicks):
        positive = k % 2 == 0
        y, x = (inside if positive else outside)[rng.integers(len(inside if positive else outside))]
        points.append([float(x) + 0.5, float(y) + 0.5])
        labels.append(int(positive))
    return points, labels


def serve_file(data: bytes) -> tuple[ThreadingHTTPServer, str]:
    """A file server standing in for Label Studio's: /data/upload/1/ped.png with the token."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == f"Token {TOKEN}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(data) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def in_process(env: dict[str, str], pixels: np.ndarray, points: list, labels: list) -> list[float]:
    """The baseline: engine.predict on a cached embedding, each click's prompt holding all so far."""
    from models.engine import EngineConfig, Prompt, build_engine

    engine = build_engine(
        EngineConfig(backend=env["SESAM_BACKEND"], export_dir=env.get("SESAM_EXPORT_DIR") or None)
    )
    handle = engine.embed([pixels])[0]
    seconds, logits = [], None
    for k in range(1, len(points) + 1):
        prompt = Prompt(points=np.array(points[:k]), labels=np.array(labels[:k]), mask_logits=logits)
        t0 = time.perf_counter()
        out = engine.predict(handle, [prompt], multimask=k == 1)
        seconds.append(time.perf_counter() - t0)
        best = int(np.argmax(out.iou[0]))
        logits = out.low_res_logits[0, best : best + 1]
    return seconds


def served(
    env: dict[str, str], data: bytes, size: tuple[int, int], points: list, labels: list, path: str
) -> dict:
    """Seconds per click through a fresh service (nothing cached): the page's path or Label Studio's."""
    port = free_port()
    proc = start_server(port, env)
    files, host = serve_file(data)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            if path == "ls":
                return {"ls": label_studio_session(http, host, size, points, labels)}
            t0 = time.perf_counter()
            image_id = http.post("/embed", files={"image": ("ped.png", data, "image/png")}).json()["image_id"]
            page_embed, page, logits_id = time.perf_counter() - t0, [], None
            for k in range(1, len(points) + 1):
                prompt = {"points": points[:k], "labels": labels[:k]}
                if logits_id:
                    prompt["mask_input_id"] = logits_id
                body = {"image_id": image_id, "prompts": [prompt], "multimask": k == 1}
                t0 = time.perf_counter()
                answer = http.post("/predict", json=body)
                page.append(time.perf_counter() - t0)
                answer.raise_for_status()
                logits_id = answer.json()["predictions"][0]["logits_id"]
            return {"page_embed": page_embed, "page": page}
    finally:
        files.shutdown()
        proc.terminate()
        proc.wait(timeout=60)


def label_studio_session(
    http: httpx.Client, host: str, size: tuple[int, int], points: list, labels: list
) -> list[float]:
    """Seconds per interactive /ls/predict; the context holds every click so far as a keypoint."""
    h, w = size
    setup = {"project": "1.0", "schema": CONFIG, "hostname": host, "access_token": TOKEN}
    http.post("/ls/setup", json=setup).raise_for_status()
    seconds = []
    for k in range(1, len(points) + 1):
        regions = [
            {
                "type": "keypointlabels",
                "original_width": w,
                "original_height": h,
                "is_positive": bool(labels[i]),
                "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.5, "keypointlabels": ["person"]},
            }
            for i, (x, y) in enumerate(points[:k])
        ]
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/ped.png"}}],
            "project": "1.0",
            "label_config": CONFIG,
            "params": {"context": {"result": regions}},
        }
        t0 = time.perf_counter()
        http.post("/ls/predict", json=body).raise_for_status()
        seconds.append(time.perf_counter() - t0)
    return seconds


def ms(seconds: list[float]) -> tuple[str, str]:
    values = 1000 * np.asarray(seconds)
    return f"{np.percentile(values, 50):.0f}", f"{np.percentile(values, 90):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--engines", nargs="+", default=["classical", "onnx"], choices=["classical", "onnx"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "labeling_latency.md"))
    args = parser.parse_args()
    from training.datasets import PennFudan

    sample = PennFudan(ROOT.parent / "shared" / "data" / "pennfudan", "val").samples()[0]
    data = sample.image.read_bytes()
    from models.engine import read_image

    pixels = read_image(sample.image)
    points, labels = session(sample.masks[0], args.clicks)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_BACKEND=engine, SESAM_BATCHING="0")
            env |= {"SESAM_STUDENT_CHECKPOINT": "none"}
            for name in ("SESAM_API_KEY", "SESAM_CONFIG", "SESAM_EXPORT_DIR", "SESAM_SAM_CHECKPOINT"):
                env.pop(name, None)
            name = "classical prior (not SAM)"
            if engine == "onnx":
                from export.onnx_export import export_sam_checkpoint

                export = Path(tmp) / "vit_b"
                print("exporting SAM ViT-B (random weights) to ONNX ...", flush=True)
                export_sam_checkpoint("vit_b", None, export, random_seed=0)
                env["SESAM_EXPORT_DIR"] = str(export)
                name = "SAM ViT-B, ONNX Runtime (random weights)"
            base = in_process(env, pixels, points, labels)
            got = served(env, data, pixels.shape[:2], points, labels, "page")
            got |= served(env, data, pixels.shape[:2], points, labels, "ls")
            rows.append(
                [name, "engine.predict in-process (baseline)", *ms(base[1:]), f"{1000 * base[0]:.0f}"]
            )
            rows.append(
                [name, "page: /predict + mask_input_id", *ms(got["page"][1:]), f"{1000 * got['page'][0]:.0f}"]
            )
            rows.append([name, "Label Studio: /ls/predict", *ms(got["ls"][1:]), f"{1000 * got['ls'][0]:.0f}"])
            for row in rows[-3:]:
                print(" | ".join(row), flush=True)
            print(f"{name}: /embed of the image {1000 * got['page_embed']:.0f} ms", flush=True)
    h, w = pixels.shape[:2]
    note = (
        f"One labeling session of {args.clicks} clicks on a Penn-Fudan val pedestrian ({sample.image.name}, {w}x{h}): "
        "positive inside, then negative outside / positive inside in turn, each prompt holding every click so far. "
        "p50 / p90 over clicks 2..N (the embedding cached); `first click` is click 1 (Label Studio's includes "
        "reading the image from the file server and embedding it; the page embeds before its first click). "
        "Loopback, one client, 2 CPU cores; compare rows of one run."
    )
    head = ["engine", "path", "p50 ms", "p90 ms", "first click ms"]
    write_table(args.out, note, markdown_table(head, rows))


if __name__ == "__main__":
    main()
