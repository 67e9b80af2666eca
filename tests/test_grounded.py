"""The grounded-tags labeler (paper 003): class prompts, tiny random Grounding DINO and OWLv2 loaded
by path (once per folder, whatever the thresholds), user boxes, painting by order or score, and the
refusal to run a detector without weights."""

from __future__ import annotations

import numpy as np
import pytest

from models.io import UNLABELED
from models.labels import build_labeler
from models.labels.grounded import GroundedLabeler, GroundedOptions, class_prompts, text_queries
from models.labels.schema import BoxLabel, WeakLabels
from tests.scripted import ScriptedSegmenter
from tests.tiny_detectors import tiny_grounding_dino, tiny_owlv2


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    return {"grounding-dino": tiny_grounding_dino(root / "gdino"), "owlv2": tiny_owlv2(root / "owlv2")}


def _objects() -> list[np.ndarray]:
    a = np.zeros((60, 80), bool)
    a[5:30, 5:40] = True
    b = np.zeros((60, 80), bool)
    b[20:55, 30:75] = True
    return [a, b]


def test_class_prompts_carry_the_papers_helper_words() -> None:
    voc = class_prompts("voc")
    names = [n for n, _ in voc]
    assert voc[names.index("diningtable")][1][:4] == ("dining table", "bowl", "plate", "food")
    assert "saddle" in voc[names.index("horse")][1]
    phrases, owners = text_queries([11, 13], [p for _, p in voc])
    assert phrases[0] == "dining table" and owners.count(11) == 7 and owners[-1] == 13
    with pytest.raises(ValueError, match="tag 40"):
        text_queries([40], [p for _, p in voc])
    with pytest.raises(ValueError, match="vocabulary"):
        class_prompts("ade20k")


@pytest.mark.parametrize("source", ["grounding-dino", "owlv2"])
def test_grounded_with_a_tiny_random_detector(detectors, source) -> None:
    engine = ScriptedSegmenter(_objects())
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    weak = WeakLabels(60, 80, tags=[0, 3])  # camvid: sky, road
    labeler = build_labeler(
        "grounded",
        engine,
        box_source=source,
        detector=str(detectors[source]),
        box_threshold=0.0,
        text_threshold=0.0,
    )
    result = labeler.refine(image, weak)
    assert result.instances, "a random detector at threshold 0 still answers boxes"
    assert {i["class_id"] for i in result.instances} <= {0, 3}
    assert set(np.unique(result.labels)) <= {0, 3, UNLABELED}
    for inst in result.instances:
        x0, y0, x1, y1 = inst["box"]
        assert -1 <= x0 <= x1 <= 81 and -1 <= y0 <= y1 <= 61
    strict = build_labeler(
        "grounded", engine, box_source=source, detector=str(detectors[source]), box_threshold=1.01
    )
    assert strict.refine(image, weak).instances == []  # nothing reaches a score above 1


@pytest.mark.parametrize("source", ["grounding-dino", "owlv2"])
def test_labelers_with_other_thresholds_share_one_detector(detectors, source) -> None:
    """The detector is loaded once per checkpoint folder (not once per threshold pair: up to 8
    copies of a large model lived at once); each labeler still applies its own thresholds."""
    engine = ScriptedSegmenter(_objects())
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    weak = WeakLabels(60, 80, tags=[0, 3])
    folder = str(detectors[source])
    loose = build_labeler(
        "grounded", engine, box_source=source, detector=folder, box_threshold=0.0, text_threshold=0.0
    )
    strict = build_labeler("grounded", engine, box_source=source, detector=folder, box_threshold=1.01)
    other = build_labeler("grounded", engine, box_source=source, detector=folder, box_threshold=0.5)
    assert loose.source is strict.source is other.source
    assert loose.refine(image, weak).instances and strict.refine(image, weak).instances == []
    assert loose.refine(image, weak).instances  # the strict call left the shared model as it was


def test_grounding_dino_token_spans(detectors) -> None:
    source = GroundedLabeler(
        ScriptedSegmenter(_objects()), GroundedOptions(detector=str(detectors["grounding-dino"]))
    ).source
    # "[CLS] dining table . bowl . car ." -> dining table = tokens 1-2, bowl = 4, car = 6
    assert source.token_spans(["dining table", "bowl", "car"]) == [(1, 3), (4, 5), (6, 7)]


def test_grounded_with_user_boxes_paints_by_order_or_score() -> None:
    objects = _objects()
    engine = ScriptedSegmenter(objects)
    weak = WeakLabels(60, 80, boxes=[BoxLabel(1, (5, 5, 40, 30)), BoxLabel(2, (30, 20, 75, 55))])
    by_order = build_labeler("grounded", engine, box_source="user").refine(
        np.zeros((60, 80, 3), np.uint8), weak
    )
    assert by_order.labels[25, 35] == 2  # the overlap goes to the later box
    assert (by_order.labels[objects[0] & ~objects[1]] == 1).all()
    assert (by_order.labels[~(objects[0] | objects[1])] == UNLABELED).all()
    weak_rev = WeakLabels(60, 80, boxes=list(reversed(weak.boxes)))
    reversed_order = build_labeler("grounded", engine, box_source="user").refine(
        np.zeros((60, 80, 3), np.uint8), weak_rev
    )
    assert reversed_order.labels[25, 35] == 1
    assert len(by_order.instances) == 2 and by_order.decoder_calls == 1


def test_detectors_need_weights() -> None:
    engine = ScriptedSegmenter(_objects())
    with pytest.raises(ValueError, match="needs its weights"):
        build_labeler("grounded", engine)
    with pytest.raises(ValueError, match="no such folder"):
        build_labeler("grounded", engine, box_source="owlv2", detector="/nowhere/owlv2")
    with pytest.raises(ValueError, match="paint"):
        build_labeler("grounded", engine, box_source="user", paint="random")
