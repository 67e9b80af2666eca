"""Our Label Studio brush RLE codec (`models.labels.brush`) against label-studio-sdk's own, run in
the Label Studio venv (`make install-label-studio`): masks we encode decode to the same pixels with
the SDK's `decode_rle`, and the SDK's `mask2rle` decodes to the same pixels with ours (the
integration tier: `make integration`)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from models.labels.brush import decode_brush, encode_brush
from tests.conftest import REPO

LS_PYTHON = REPO / ".venv-ls" / "bin" / "python"
SDK_SIDE = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
cases = json.load(sys.stdin)
out = []
for case in cases:
    h, w = case["shape"]
    ours = decode_rle(case["rle"]).reshape(h, w, 4)[:, :, 3] > 127
    mask = np.array(case["mask"], dtype=np.uint8).reshape(h, w)
    out.append({"decoded": ours.ravel().astype(int).tolist(), "sdk_rle": mask2rle(mask * 255)})
json.dump(out, sys.stdout)
"""


@pytest.mark.integration
def test_our_brush_codec_agrees_with_label_studio_sdk() -> None:
    if not LS_PYTHON.exists():
        pytest.fail("the Label Studio venv is missing: run `make install-label-studio`", pytrace=False)
    rng = np.random.default_rng(0)
    masks = [np.ones((1, 1), bool), np.zeros((7, 5), bool), rng.random((37, 53)) > 0.5]
    person = np.zeros((300, 400), bool)
    person[40:260, 120:210] = True
    masks.append(person | (rng.random(person.shape) > 0.999))
    cases = [
        {"shape": list(m.shape), "mask": m.ravel().astype(int).tolist(), "rle": encode_brush(m)}
        for m in masks
    ]
    done = subprocess.run(
        [str(LS_PYTHON), "-c", SDK_SIDE], input=json.dumps(cases), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for mask, answer in zip(masks, json.loads(done.stdout), strict=True):
        assert np.array_equal(np.array(answer["decoded"], bool).reshape(mask.shape), mask)
        assert np.array_equal(decode_brush(answer["sdk_rle"], *mask.shape), mask)
