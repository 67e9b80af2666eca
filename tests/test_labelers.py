"""SeSAM / naive / SEPL labelers end to end on a scripted segmenter and on the classical prior."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from models.engine import Prompt
from models.engine.classical import ClassicalPrior
from models.labels import SeSAMLabeler, SeSAMOptions, build_labeler, confident_labels
from models.labels.common import RefineResult
from models.labels.schema import BoxLabel, PointLabel, Scribble, WeakLabels
from tests.scripted import ScriptedSegmenter

H, W = 80, 120


def _objects() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((H, W), bool)
    a[10:50, 10:50] = True
    b = np.zeros((H, W), bool)
    b[20:70, 70:110] = True
    return a, b


@pytest.fixture
def setup():
    a, b = _objects()
    coarse = np.full((H, W), 255, np.uint8)
    coarse[ndi.binary_erosion(a, iterations=3)] = 1
    coarse[ndi.binary_erosion(b, iterations=3)] = 2
    image = np.zeros((H, W, 3), np.uint8)
    return ScriptedSegmenter([a, b]), WeakLabels(H, W, coarse=coarse), image, a, b


def test_sesam_selection_picks_whole_where_best_score_picks_part(setup) -> None:
    engine, weak, image, a, b = setup
    sesam = SeSAMLabeler(engine).refine(image, weak)
    assert (sesam.labels[a] == 1).all() and (sesam.labels[b] == 2).all()
    assert ((sesam.labels != 255) == (a | b)).all()  # never the too-large candidate
    assert [i["candidate"] for i in sesam.instances] == [1, 1]

    best = SeSAMLabeler(engine, SeSAMOptions(selection="best-score")).refine(image, weak)
    assert [i["candidate"] for i in best.instances] == [0, 0]
    part = engine.candidates(0)[0]
    assert (best.labels[part] == 1).all()
    assert (best.labels == 1).sum() < a.sum()  # only part + the weak pixels


def test_all_component_prompts_go_in_one_predict_call(setup) -> None:
    engine, weak, image, *_ = setup
    result = SeSAMLabeler(engine).refine(image, weak)
    assert len(engine.seen) == 1 and len(engine.seen[0]) == 2
    assert result.decoder_calls == 1 and result.prompts == 2
    assert all(p.num_points == 5 for p in engine.seen[0])


def test_instance_separation_switch(setup) -> None:
    engine, _, image, _a, _ = setup
    coarse = np.full((H, W), 255, np.uint8)
    coarse[12:20, 12:20] = 1
    coarse[30:45, 30:45] = 1  # two separate blobs of class 1
    weak = WeakLabels(H, W, coarse=coarse)
    SeSAMLabeler(engine).refine(image, weak)
    assert len(engine.seen[-1]) == 2
    SeSAMLabeler(engine, SeSAMOptions(instance_separation=False)).refine(image, weak)
    assert len(engine.seen[-1]) == 1


@pytest.mark.parametrize("prompt", ["box", "mask"])
def test_box_and_mask_prompt_modes(setup, prompt: str) -> None:
    engine, weak, image, a, _b = setup
    result = SeSAMLabeler(engine, SeSAMOptions(prompt=prompt)).refine(image, weak)
    sent = engine.seen[-1]
    assert all((p.box is not None) == (prompt == "box") for p in sent)
    assert all((p.mask_logits is not None) == (prompt == "mask") for p in sent)
    assert (result.labels[a] == 1).all()


def test_points_start_from_the_smallest_mask_and_keep_the_weak_pixel(setup) -> None:
    engine, _, image, _a, _ = setup
    weak = WeakLabels(H, W, points=[PointLabel(15, 15, 1)])
    result = SeSAMLabeler(engine).refine(image, weak)
    part = engine.candidates(0)[0]
    assert (result.labels[part] == 1).all()
    assert result.labels[15, 15] == 1
    assert result.decoder_calls == 2  # initial masks, then component prompts


def test_weak_labels_always_win(setup) -> None:
    engine, weak, image, _a, _b = setup
    weak.coarse[40, 40] = 2  # a (wrong) weak label inside object a
    result = SeSAMLabeler(engine).refine(image, weak)
    assert result.labels[40, 40] == 2


def test_teacher_extension(setup) -> None:
    _engine, weak, _image, _a, _b = setup
    probs = np.zeros((3, H, W), np.float32)
    probs[0] = 1.0
    probs[:, 0:5, 0:5] = 0
    probs[1, 0:5, 0:5] = 0.99  # confident class 1 in an unlabeled corner
    confident = confident_labels(probs, 0.98)
    masks = SeSAMLabeler.extend({1: weak.coarse == 1}, confident, weak.sparse_map())
    assert masks[1][0:5, 0:5].all()
    assert masks[0].sum() == (weak.sparse_map() == 255).sum() - 25  # class 0 everywhere else free
    low = SeSAMLabeler.extend({1: weak.coarse == 1}, confident_labels(probs * 0.5, 0.98), weak.sparse_map())
    assert not low[1][0:5, 0:5].any()


def test_naive_takes_sam_best_score(setup) -> None:
    engine, weak, image, _a, _ = setup
    result = build_labeler("naive", engine).refine(image, weak)
    assert all(i["candidate"] == 0 for i in result.instances)


@pytest.mark.parametrize("overlap", ["score", "unlabeled"])
def test_sepl_on_scripted_masks_hand_worked(setup, overlap: str) -> None:
    """The scripted automatic masks are part, whole and huge (the object dilated 12 px) of a and of
    b; the pseudo-labels are the coarse maps P1 (a eroded by 3: 34x34 = 1156 px) and P2 (b eroded:
    44x34 = 1496 px). Rule paper (t1 0.5, t2 0.85), every mask goes to the class it overlaps:

    - part a (400 px, 289 on P1): o_s 0.7225, kept; a (1600 px): o_s 1156/1600 = 0.7225, kept;
      huge a (3620 px): o_s 1156/3620, but o_p = 1 > t2: kept. Class 1 = huge a, score 0.5881.
    - part b (500 px, 374 on P2): o_s 0.748; b (2000 px): 0.748; huge b (4240 px): o_p = 1: kept.
      Class 2 = huge b, score mean(0.748, 0.748, 1496/4240) = 0.6163.
    - huge a and huge b share 132 px (columns 58-61): `score` gives them to class 2 (0.6163 > 0.5881),
      `unlabeled` leaves them unlabeled; nothing else is labelled."""
    engine, weak, image, a, b = setup
    huge_a, huge_b = ndi.binary_dilation(a, iterations=12), ndi.binary_dilation(b, iterations=12)
    assert (huge_a.sum(), huge_b.sum(), (huge_a & huge_b).sum()) == (3620, 4240, 132)
    result = build_labeler(
        "sepl", engine, points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0, overlap=overlap
    ).refine(image, weak)
    expected = np.full((H, W), 255, np.uint8)
    expected[huge_a], expected[huge_b] = 1, 2
    if overlap == "unlabeled":
        expected[huge_a & huge_b] = 255
    assert np.array_equal(result.labels, expected)
    assert {r["class_id"]: r["score"] for r in result.instances} == {1: 0.5881, 2: 0.6163}


def test_bad_options() -> None:
    with pytest.raises(
        ValueError, match=r"sesam options: unknown sampling 'grid'; choose one of \['boundary',"
    ):
        build_labeler("sesam", ClassicalPrior(), sampling="grid")
    with pytest.raises(ValueError, match="unknown refinement method 'fancy'"):
        build_labeler("fancy", ClassicalPrior())
    with pytest.raises(ValueError, match=r"sesam options: unknown settings \[.colour.\]"):
        build_labeler("sesam", ClassicalPrior(), colour="red")
    with pytest.raises(ValueError, match=r"sesam options: negatives must lie in \[0, 16\], got 17"):
        build_labeler("sesam", ClassicalPrior(), negatives=17)


@pytest.mark.parametrize("kind", ["points", "scribbles", "coarse"])
def test_classical_prior_refinement_on_scene(scene, kind: str) -> None:
    h, w = scene.shape[:2]
    rect = np.zeros((h, w), bool)
    rect[60:200, 50:200] = True
    if kind == "points":
        weak = WeakLabels(h, w, points=[PointLabel(120, 130, 4)])
    elif kind == "scribbles":
        weak = WeakLabels(h, w, scribbles=[Scribble(4, np.array([[70.0, 100.0], [180.0, 160.0]]), 3)])
    else:
        coarse = np.full((h, w), 255, np.uint8)
        coarse[80:180, 70:180] = 4
        weak = WeakLabels(h, w, coarse=coarse)
    result = build_labeler("sesam", ClassicalPrior()).refine(scene, weak)
    named = weak.sparse_map() != 255
    assert (result.labels[named] == 4).all()
    labelled = result.labels == 4
    assert labelled.sum() > named.sum()  # refinement added pixels
    assert (labelled & rect).sum() / labelled.sum() > 0.95  # and they are on the red rectangle


def test_scripted_segmenter_honours_multimask(setup) -> None:
    engine, _, image, _, b = setup
    prompt = [Prompt(points=[[80, 30]], labels=[1])]
    three, one = engine.predict(image, prompt), engine.predict(image, prompt, multimask=False)
    assert three.masks.shape[1] == 3 and one.masks.shape[1] == 1 and one.iou.shape == (1, 1)
    assert np.array_equal(one.masks[0, 0], b) and np.array_equal(three.masks[0, 1], b)


def test_a_candidate_holding_another_class_weak_label_is_not_chosen(setup) -> None:
    """Step 4: a class-2 weak pixel inside object a but outside its part rules out the whole and the
    too-large candidates for class 1 (exclude_conflicts); off (the default), the paper's rule picks the whole."""
    engine, weak, image, *_ = setup
    weak.coarse[45, 45] = 2  # one pixel: too small to be prompted itself
    paper = SeSAMLabeler(engine).refine(image, weak)
    assert [i["candidate"] for i in paper.instances if i["class_id"] == 1] == [1]
    guarded = SeSAMLabeler(engine, SeSAMOptions(exclude_conflicts=True)).refine(image, weak)
    assert [i["candidate"] for i in guarded.instances if i["class_id"] == 1] == [0]
    assert guarded.labels[45, 45] == 2


def test_when_every_candidate_conflicts_a_point_keeps_its_own_pixel(setup) -> None:
    """Step 1: two points of different classes inside the part of object a. Every candidate holds
    the other class's point, so each class keeps its weak pixel alone (a 1-pixel component is not
    prompted again); off, class 1's smallest candidate (the part) is labelled."""
    engine, _, image, _a, _ = setup
    weak = WeakLabels(H, W, points=[PointLabel(15, 15, 1), PointLabel(20, 20, 2)])
    part = engine.candidates(0)[0]
    paper = SeSAMLabeler(engine).refine(image, weak)
    assert (paper.labels[part] != 255).all()
    guarded = SeSAMLabeler(engine, SeSAMOptions(exclude_conflicts=True)).refine(image, weak)
    assert np.count_nonzero(guarded.labels != 255) == 2
    assert guarded.labels[15, 15] == 1 and guarded.labels[20, 20] == 2


def test_other_class_points_join_as_negative_clicks(setup) -> None:
    """negatives=1: every point prompt carries the nearest weak point of another class as a negative
    click, in step 1 and in step 4; negatives=0 (the paper) sends positive points only."""
    engine, _, image, _a, _ = setup
    weak = WeakLabels(H, W, points=[PointLabel(15, 15, 1), PointLabel(90, 40, 2), PointLabel(100, 60, 2)])
    SeSAMLabeler(engine, SeSAMOptions(negatives=1)).refine(image, weak)
    first, second = engine.seen[0], engine.seen[-1]
    assert [p.labels.tolist() for p in first] == [[1, 0]] * 3
    assert first[0].points[1].tolist() == [90, 40]  # class 1's nearest class-2 point
    assert first[1].points[1].tolist() == first[2].points[1].tolist() == [15, 15]
    assert all(p.labels.tolist() == [1] * 5 + [0] for p in second)
    before = len(engine.seen)
    SeSAMLabeler(engine).refine(image, weak)
    assert len(engine.seen) > before
    assert all((p.labels == 1).all() for call in engine.seen[before:] for p in call)


def test_a_box_whose_every_candidate_conflicts_adds_nothing(setup) -> None:
    """Step 1 with exclude_conflicts: a box over object a holding a class-2 point inside a's part
    (so inside every candidate, clipped or not) adds no class-1 pixels; without the rule the box's
    best-scored candidate (the part) is labelled. A class-2 point outside the box conflicts with
    no clipped candidate: the box's answer stands."""
    engine, _, image, _a, _ = setup
    inside = WeakLabels(H, W, points=[PointLabel(20, 20, 2)], boxes=[BoxLabel(1, (10, 10, 50, 50))])
    part = engine.candidates(0)[0]
    paper = SeSAMLabeler(engine).initial_masks(
        engine.embed([image])[0], inside, RefineResult(labels=np.empty(0))
    )
    assert (paper[1] == part).all()
    guarded = SeSAMLabeler(engine, SeSAMOptions(exclude_conflicts=True))
    masks = guarded.initial_masks(engine.embed([image])[0], inside, RefineResult(labels=np.empty(0)))
    assert 1 not in masks
    outside = WeakLabels(H, W, points=[PointLabel(60, 5, 2)], boxes=[BoxLabel(1, (10, 10, 50, 50))])
    masks = guarded.initial_masks(engine.embed([image])[0], outside, RefineResult(labels=np.empty(0)))
    assert (masks[1] == part).all()  # the too-large candidate reaches (60, 5), but not once clipped
