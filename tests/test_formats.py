"""Weak labels read from labeling tools' exports (CVAT for images 1.1 XML, COCO instances JSON): shapes
on hand-made images with known answers, and real shapes on shared/data images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import find_contours

from models.config import lookup
from models.io import UNLABELED, read_label_png
from models.labels.formats import WEAK_FORMATS, cvat_mask, interior_point, read_coco_weak, read_cvat_xml
from tests.conftest import require_data

CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>person</name></label>
    <label><name>car</name></label>
  </labels></task></meta>
  <image id="0" name="frames/street_01.jpg" width="30" height="20">
    <box label="car" xtl="2" ytl="3" xbr="12.5" ybr="30" occluded="0" z_order="0"/>
    <points label="person" points="5,6;29.9,19"/>
    <polyline label="person" points="1,1;10,1;10,8"/>
    <mask label="person" rle="0,2,2,2" left="22" top="4" width="2" height="3" z_order="1"/>
    <polygon label="car" points="20,2;26,2;26,8;20,8" z_order="0"/>
    <tag label="car"/>
  </image>
</annotations>
"""


def test_cvat_mask_rle_on_a_hand_worked_box() -> None:
    # runs 2 zeros, 3 ones, 1 zero over a 3x2 box, row-major
    assert cvat_mask("2,3,1", 3, 2, "m").tolist() == [[False, False, True], [True, True, False]]
    with pytest.raises(ValueError, match="covers 5 pixels, the box 3x2 has 6"):
        cvat_mask("2,3", 3, 2, "m")


def test_cvat_shapes_become_weak_labels(tmp_path: Path) -> None:
    path = tmp_path / "annotations.xml"
    path.write_text(CVAT)
    read = read_cvat_xml(path)
    assert read.class_names == ["person", "car"] and list(read.labels) == ["street_01"]
    weak = read.labels["street_01"]
    assert weak.size == (20, 30) and weak.tags == [1]
    assert [(b.class_id, b.box) for b in weak.boxes] == [(1, (2.0, 3.0, 12.5, 20.0))]  # clipped to the image
    assert [(p.class_id, p.x, p.y) for p in weak.points] == [(0, 5.0, 6.0), (0, 29.9, 19.0)]
    assert weak.scribbles[0].class_id == 0 and weak.scribbles[0].points.tolist() == [[1, 1], [10, 1], [10, 8]]
    coarse = weak.coarse
    # the polygon (car) covers rows 2..8, columns 20..26; the mask (person, z_order 1, listed first) is on top:
    # runs 0 zeros, 2 ones, 2 zeros, 2 ones over its 2-wide, 3-high box at (22, 4): rows 4 and 6
    assert coarse[3, 21] == 1 and coarse[4, 22] == 0 and coarse[5, 22] == 1 and coarse[6, 23] == 0
    assert coarse[0, 0] == UNLABELED and coarse[10, 21] == UNLABELED
    assert sorted(weak.kinds()) == ["boxes", "coarse", "points", "scribbles", "tags"]


def test_cvat_errors_name_the_file_image_and_label(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(CVAT.replace('<tag label="car"/>', '<tag label="truck"/>'))
    with pytest.raises(ValueError, match=r"bad.xml: image 'frames/street_01.jpg', <tag> 5: label 'truck'"):
        read_cvat_xml(path)
    (tmp_path / "broken.xml").write_text("<annotations>")
    with pytest.raises(ValueError, match=r"broken\.xml: not a readable CVAT XML file"):
        read_cvat_xml(tmp_path / "broken.xml")


def test_cvat_polygons_of_real_pedestrians_match_their_masks(tmp_path: Path) -> None:
    """Penn-Fudan's masks traced as CVAT polygons (as an annotator would draw them) and its boxes:
    the weak labels read back hold the boxes exactly and the masks to within the tracing."""
    from training.datasets import PennFudan

    sample = PennFudan(require_data("pennfudan"), "val").samples()[0]
    h, w = sample.size
    shapes = []
    for mask in sample.masks:
        ys, xs = np.nonzero(mask)
        shapes.append(
            f'<box label="person" xtl="{xs.min()}" ytl="{ys.min()}" xbr="{xs.max() + 1}" ybr="{ys.max() + 1}"/>'
        )
        contour = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1
        points = ";".join(f"{x:.2f},{y:.2f}" for y, x in contour)
        shapes.append(f'<polygon label="person" points="{points}"/>')
    xml = (
        "<annotations><meta><task><labels><label><name>person</name></label></labels></task></meta>"
        f'<image id="0" name="{sample.image.name}" width="{w}" height="{h}">{"".join(shapes)}</image></annotations>'
    )
    (tmp_path / "pf.xml").write_text(xml)
    weak = read_cvat_xml(tmp_path / "pf.xml").labels[sample.image.stem]
    assert len(weak.boxes) == len(sample.masks) >= 1
    for box, mask in zip(weak.boxes, sample.masks, strict=True):
        ys, xs = np.nonzero(mask)
        assert box.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    truth = np.any(sample.masks, axis=0)
    labelled = weak.coarse == 0
    assert (labelled & truth).sum() / (labelled | truth).sum() > 0.95


def pennfudan_cvat(tmp_path: Path):
    """One Penn-Fudan val image in its own folder and its pedestrians' boxes as a CVAT export."""
    import shutil

    from training.datasets import PennFudan

    sample = PennFudan(require_data("pennfudan"), "val").samples()[0]
    h, w = sample.size
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample.image, images / sample.image.name)
    boxes = []
    for mask in sample.masks:
        ys, xs = np.nonzero(mask)
        boxes.append(
            f'<box label="person" xtl="{xs.min()}" ytl="{ys.min()}" xbr="{xs.max() + 1}" ybr="{ys.max() + 1}"/>'
        )
    xml = (
        "<annotations><meta><task><labels><label><name>person</name></label></labels></task></meta>"
        f'<image id="{sample.image_id}" name="{sample.image.name}" width="{w}" height="{h}">'
        f"{''.join(boxes)}</image></annotations>"
    )
    (tmp_path / "export.xml").write_text(xml)
    return sample, images, tmp_path / "export.xml"


def check_coco_outputs(out: Path, labels: np.ndarray, image_ids: set[int], categories: list[dict]) -> None:
    """coco.json loads in pycocotools, names these images and categories, and its regions decode
    back to exactly the labelled pixels of the refined map; coco_results.json holds the same."""
    from pycocotools.coco import COCO

    coco = COCO(str(out / "coco.json"))
    assert set(coco.getImgIds()) == image_ids and coco.loadCats(coco.getCatIds()) == categories
    union = np.zeros(labels.shape, bool)
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann).astype(bool)
        assert not (union & mask).any() and ann["area"] == mask.sum()
        union |= mask
    assert np.array_equal(union, labels != UNLABELED)
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == len(coco.getAnnIds()) and {r["score"] for r in results} == {1.0}
    check_label_studio_outputs(out, labels, [c["name"] for c in categories])


def check_label_studio_outputs(out: Path, labels: np.ndarray, names: list[str]) -> None:
    """label_studio.json holds one brush prediction per class of the map, decoding to exactly its
    pixels, on the labels of label_studio_config.xml; read back as weak labels it is the same map."""
    from models.labels.brush import decode_brush
    from models.labels.formats import read_label_studio

    tasks = json.loads((out / "label_studio.json").read_text())
    config = (out / "label_studio_config.xml").read_text()
    assert all(f'<Label value="{n}"/>' in config for n in names)
    (result,) = [t["predictions"][0]["result"] for t in tasks]
    h, w = labels.shape
    present = [int(c) for c in np.unique(labels) if c != UNLABELED]
    assert [r["value"]["brushlabels"] for r in result] == [[names[c]] for c in present]
    for r, c in zip(result, present, strict=True):
        assert (r["original_height"], r["original_width"]) == (h, w)
        assert np.array_equal(decode_brush(r["value"]["rle"], h, w), labels == c)
    as_export = [t | {"annotations": t["predictions"]} for t in tasks]
    (out / "ls_export.json").write_text(json.dumps(as_export))
    (weak,) = read_label_studio(out / "ls_export.json", names).labels.values()
    assert np.array_equal(weak.coarse, labels)


def test_sesam_refine_reads_a_cvat_export(tmp_path: Path, capsys) -> None:
    from models.labels.schema import load_weak_labels
    from sesam.cli import main

    sample, images, export = pennfudan_cvat(tmp_path)
    out = tmp_path / "out"
    code = main(
        ["refine", "--images", str(images), "--weak", str(export), "--out", str(out), "--quiet", "--report"]
    )
    assert code == 0, capsys.readouterr()
    # the report's legend names the export's class in its overlay colour (the palette's first)
    assert (
        "<span class='swatch' style='background:rgb(230,25,75)'></span>person"
        in (out / "report.html").read_text()
    )
    stem = sample.image.stem
    staged = load_weak_labels(out / ".weak", stem)
    assert staged.to_json() == read_cvat_xml(export).labels[stem].to_json()
    assert json.loads((out / "classes.json").read_text())["classes"] == ["person"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["refined"], summary["failed"]) == (1, 0)
    labels = read_label_png(out / f"{stem}.png")
    assert labels.shape == sample.size and set(np.unique(labels)) == {0, UNLABELED}
    check_coco_outputs(out, labels, {sample.image_id}, [{"id": 1, "name": "person"}])
    from training.coco import coco_dataset, write_coco

    write_coco(coco_dataset([sample], ["person"]), tmp_path / "gt.json")
    capsys.readouterr()
    assert (
        main(["eval-instances", "--pred", str(out / "coco_results.json"), "--gt", str(tmp_path / "gt.json")])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and report["predictions"] == len(
        json.loads((out / "coco.json").read_text())["annotations"]
    )
    code = main(["refine", "--images", str(images), "--weak", str(tmp_path / "nope.xml"), "--out", str(out)])
    assert code != 0 and "nope.xml: a cvat export must be a file" in capsys.readouterr().err


def test_coco_objects_become_one_box_or_one_inner_point_each() -> None:
    path = require_data("coco_mini") / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    boxes, points = read_coco_weak(path, "boxes"), read_coco_weak(path, "points")
    assert boxes.class_names == [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    objects = [a for a in data["annotations"] if not a.get("iscrowd")]
    assert sum(len(w.boxes) for w in boxes.labels.values()) == len(objects)
    assert all(w.instances for w in points.labels.values())
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    first = next(im for im in data["images"] if coco.getAnnIds(imgIds=im["id"], iscrowd=False))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=first["id"], iscrowd=False))
    weak = points.labels[Path(first["file_name"]).stem]
    masks = [coco.annToMask(a).astype(bool) for a in anns]
    inside = [masks[i][int(p.y), int(p.x)] for i, p in enumerate(weak.points)]
    assert len(weak.points) == len(anns) and all(inside)


def test_interior_point_on_a_hand_made_mask() -> None:
    mask = np.zeros((9, 9), bool)
    mask[1:8, 2:5] = True  # a 7x3 bar: the farthest pixel from its border is the centre column
    assert interior_point(mask) == (3.0, 2.0)  # first of the equally deep pixels (rows 2..6) in row order


def test_formats_registry() -> None:
    assert sorted(WEAK_FORMATS) == ["coco-boxes", "coco-points", "cvat", "label-studio"]
    with pytest.raises(ValueError, match="unknown weak-label format 'voc'"):
        lookup(WEAK_FORMATS, "voc", "weak-label format")


def test_a_coco_file_refined_back_to_coco_keeps_its_ids(tmp_path: Path, capsys) -> None:
    """One COCO-mini val image's objects as weak boxes -> sesam refine -> coco.json with the source's
    image and category ids, scored by eval-instances against the source."""
    import shutil

    from sesam.cli import main

    root = require_data("coco_mini")
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    image = min(
        (im for im in data["images"] if any(a["image_id"] == im["id"] for a in data["annotations"])),
        key=lambda im: sum(a["image_id"] == im["id"] for a in data["annotations"]),
    )
    source = data | {
        "images": [image],
        "annotations": [a for a in data["annotations"] if a["image_id"] == image["id"]],
    }
    (tmp_path / "source.json").write_text(json.dumps(source))
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "val2017" / image["file_name"], images / image["file_name"])
    out = tmp_path / "out"
    args = ["refine", "--images", str(images), "--weak", str(tmp_path / "source.json"), "--out", str(out)]
    assert main([*args, "--weak-format", "coco-boxes", "--quiet"]) == 0, capsys.readouterr()
    labels = read_label_png(out / f"{Path(image['file_name']).stem}.png")
    categories = sorted(
        ({"id": c["id"], "name": c["name"]} for c in data["categories"]), key=lambda c: c["id"]
    )
    check_coco_outputs(out, labels, {image["id"]}, categories)  # every source category, its own id
    capsys.readouterr()
    assert (
        main(
            [
                "eval-instances",
                "--pred",
                str(out / "coco_results.json"),
                "--gt",
                str(tmp_path / "source.json"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] == 1


def test_sesam_segment_writes_its_instances_as_coco(tmp_path: Path, capsys) -> None:
    """The shipped Penn-Fudan instance student on one image: coco.json holds exactly the instances of
    <stem>.json (masks, classes, scores in coco_results.json) and loads in pycocotools."""
    from pycocotools.coco import COCO

    from models.students.semantic import SHIPPED_INSTANCE_STUDENT
    from sesam.cli import main

    sample, images, _ = pennfudan_cvat(tmp_path)
    out = tmp_path / "segmented"
    args = ["segment", "--images", str(images), "--out", str(out), "--student", str(SHIPPED_INSTANCE_STUDENT)]
    assert main([*args, "--min-score", "0", "--quiet"]) == 0, capsys.readouterr()
    answer = json.loads((out / f"{sample.image.stem}.json").read_text())
    coco = COCO(str(out / "coco.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(answer["instances"]) > 0
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "pedestrian"}]  # the student's class name
    for ann, instance in zip(anns, answer["instances"], strict=True):
        assert ann["segmentation"] == instance["mask"] and ann["category_id"] == instance["class_id"] + 1
    results = json.loads((out / "coco_results.json").read_text())
    assert [r["score"] for r in results] == [i["score"] for i in answer["instances"]]
    from models.io import decode_rle
    from models.labels.brush import decode_brush

    (task,) = json.loads((out / "label_studio.json").read_text())
    assert task["data"]["image"] == f"/data/local-files/?d={sample.image.name}"
    brushes = task["predictions"][0]["result"]
    h, w = answer["height"], answer["width"]
    for brush, instance in zip(brushes, answer["instances"], strict=True):
        assert brush["value"]["brushlabels"] == ["pedestrian"] and brush["score"] == instance["score"]
        assert np.array_equal(decode_brush(brush["value"]["rle"], h, w), decode_rle(instance["mask"]))


def test_a_semantic_students_answers_are_named_by_its_classes(tmp_path: Path, capsys) -> None:
    """The shipped CamVid student on one CamVid image: coco.json's categories and the Label Studio
    brushes carry the student's class names (not class_<id>), and each brush is one class's pixels."""
    import shutil

    from models.students.runtime import load_segmenter
    from models.students.semantic import SHIPPED_SEMANTIC_STUDENT as SHIPPED_STUDENT
    from sesam.cli import main

    root = require_data("camvid")
    stem = (root / "val.txt").read_text().split()[0]
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "images" / "val" / f"{stem}.jpg", images)
    out = tmp_path / "segmented"
    args = ["segment", "--images", str(images), "--out", str(out), "--student", str(SHIPPED_STUDENT)]
    assert main([*args, "--quiet", "--ls-image-prefix", "https://bucket.example/camvid/"]) == 0, (
        capsys.readouterr()
    )
    names = list(load_segmenter(SHIPPED_STUDENT).class_names)
    labels = read_label_png(out / f"{stem}.png")
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(names)]
    check_coco_outputs(out, labels, {1}, categories)
    (task,) = json.loads((out / "label_studio.json").read_text())
    assert task["data"]["image"] == f"https://bucket.example/camvid/{stem}.jpg"


def ls_region(kind: str, value: dict, label: str, width: int = 200, height: int = 100) -> dict:
    return {
        "type": kind,
        "from_name": "tag",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": value | {kind: [label]},
    }


def test_label_studio_regions_become_weak_labels(tmp_path: Path) -> None:
    from models.labels.formats import read_label_studio

    result = [
        ls_region("keypointlabels", {"x": 10, "y": 20, "width": 0.5}, "person"),
        ls_region("rectanglelabels", {"x": 50, "y": 10, "width": 25, "height": 50, "rotation": 0}, "car"),
        # 20x20 pixels turned 90 degrees clockwise about its top-left corner (100, 10)
        ls_region("rectanglelabels", {"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 90}, "car"),
        ls_region("polygonlabels", {"points": [[80, 10], [90, 10], [90, 90], [80, 90]]}, "person"),
    ]
    tasks = [
        {
            "id": 7,
            "data": {"image": "/data/upload/3/1a2b3c4d-street_01.jpg"},
            "annotations": [{"result": result}],
        },
        {"id": 8, "data": {"image": "/data/upload/3/0f0f0f0f-empty.jpg"}, "annotations": [{"result": []}]},
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    read = read_label_studio(tmp_path / "export.json")
    assert read.class_names == ["car", "person"] and list(read.labels) == ["street_01"]
    assert read.image_ids == {"street_01": 7}
    weak = read.labels["street_01"]
    assert weak.size == (100, 200)
    assert [(p.class_id, p.x, p.y) for p in weak.points] == [(1, 20.0, 20.0)]
    assert [(b.class_id, tuple(round(v, 6) for v in b.box)) for b in weak.boxes] == [
        (0, (100.0, 10.0, 150.0, 60.0)),
        (0, (80.0, 10.0, 100.0, 30.0)),
    ]
    assert (
        weak.coarse[50, 170] == 1 and weak.coarse[50, 150] == UNLABELED and weak.coarse[5, 170] == UNLABELED
    )
    brush = [
        {
            "id": 9,
            "data": {"image": "a.png"},
            "annotations": [{"result": [ls_region("brushlabels", {"format": "rle", "rle": [0]}, "car")]}],
        }
    ]
    (tmp_path / "brush.json").write_text(json.dumps(brush))
    with pytest.raises(ValueError, match=r"task 9, result\[0\]: brush value is not Label Studio RLE"):
        read_label_studio(tmp_path / "brush.json")


def test_a_label_studio_export_refined_to_coco(tmp_path: Path, capsys) -> None:
    """Penn-Fudan pedestrians as a Label Studio export (a brush stroke inside one, a keypoint on each
    other) -> sesam refine -> coco.json that pycocotools loads and eval-instances scores against
    the pedestrians; label_studio.json reads back as the refined map."""
    from models.labels.brush import brush_result
    from sesam.cli import main
    from training.coco import coco_dataset, write_coco

    sample, images, _ = pennfudan_cvat(tmp_path)
    h, w = sample.size
    first, *others = sample.masks
    from scipy import ndimage as ndi

    stroke = ndi.binary_erosion(first, iterations=8)  # a coarse brush well inside the first person
    result = [brush_result(stroke, "person", "tag", "image")]
    for mask in others:
        x, y = interior_point(mask)
        result.append(
            ls_region("keypointlabels", {"x": 100 * x / w, "y": 100 * y / h, "width": 1}, "person", w, h)
        )
    task = {
        "id": 5,
        "data": {"image": f"/data/upload/1/0badcafe-{sample.image.name}"},
        "annotations": [{"result": result}],
    }
    (tmp_path / "ls.json").write_text(json.dumps([task]))
    out = tmp_path / "out"
    args = ["refine", "--images", str(images), "--weak", str(tmp_path / "ls.json"), "--out", str(out)]
    assert main([*args, "--weak-format", "label-studio", "--quiet"]) == 0, capsys.readouterr()
    labels = read_label_png(out / f"{sample.image.stem}.png")
    assert labels[stroke].tolist() == [0] * int(stroke.sum())  # the brush's pixels keep their class
    check_coco_outputs(out, labels, {5}, [{"id": 1, "name": "person"}])
    gt = coco_dataset([sample], ["person"])
    gt["images"][0]["id"] = 5
    for a in gt["annotations"]:
        a["image_id"] = 5
    write_coco(gt, tmp_path / "gt.json")
    capsys.readouterr()
    pred = str(out / "coco_results.json")
    assert main(["eval-instances", "--pred", pred, "--gt", str(tmp_path / "gt.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and report["predictions"] >= 1


def test_label_studio_boxes_of_real_pedestrians_round_trip(tmp_path: Path) -> None:
    """Penn-Fudan's boxes as Label Studio rectangles (percent of the image) read back as the pixel boxes."""
    from models.labels.formats import read_label_studio

    sample, _, _ = pennfudan_cvat(tmp_path)
    h, w = sample.size
    boxes = []
    for mask in sample.masks:
        ys, xs = np.nonzero(mask)
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    result = [
        ls_region(
            "rectanglelabels",
            {
                "x": 100 * x0 / w,
                "y": 100 * y0 / h,
                "width": 100 * (x1 - x0) / w,
                "height": 100 * (y1 - y0) / h,
            },
            "person",
            w,
            h,
        )
        for x0, y0, x1, y1 in boxes
    ]
    task = {
        "id": 1,
        "data": {"image": f"/data/upload/1/deadbeef-{sample.image.name}"},
        "annotations": [{"result": result}],
    }
    (tmp_path / "ls.json").write_text(json.dumps([task]))
    weak = read_label_studio(tmp_path / "ls.json").labels[sample.image.stem]
    assert [tuple(round(v, 6) for v in b.box) for b in weak.boxes] == boxes
