"""WeakSAM (paper 004) as a labeler: image tags -> pseudo instance masks and a class map (WSIS).

1. CAMs of the image (`models.cam`), used for the peak prompts and, with `scorer: cam`, to score.
2. WeakSAM-proposals (`models.weaksam.proposals`): grid + CAM-peak prompts -> SAM -> boxes -> NMS.
3. Proposal scores per tagged class, by `scorer`:
   - `wsod`: a trained WSOD head (`models.weaksam.wsod`, `sesam weaksam train-wsod`): the mean of
     the OICR branches' class probabilities, the paper's detector;
   - `cam` (no detector trained): the geometric mean of how hot the class's normalised CAM is
     inside the box (its mean there) and how much of the class's CAM mass the box holds, so
     neither a tiny box on the peak nor the whole image wins (a training-free stand-in for the
     detector, not the paper's).
   Per class, NMS at `det_nms` gives the detections (WSOD inference).
4. Adaptive PGT (`models.weaksam.pgt`, Algorithm 2, `pgt_variant`, `tau_s`, `tau_o`).
5. WSIS: every PGT box prompts SAM; the mask (clipped to the box) is a pseudo instance; instances
   merge into the class map by the shared rule (overlaps by score or unlabeled). Weak labels win.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import nms

from models.cam import CamPredictor, cam_predictor
from models.config import setting
from models.deadline import check_deadline
from models.engine import ImageHandle, PromptableSegmenter
from models.refine.common import RefineResult, box_instances, ensure_handle
from models.refine.merge import OVERLAP_RULES, Instance, merge_instances
from models.weak import WeakLabels
from models.weaksam.pgt import PGT_VARIANTS, adaptive_pgt
from models.weaksam.proposals import ProposalOptions, weaksam_proposals

SCORERS = ("cam", "wsod")


@dataclass
class WeakSAMOptions(ProposalOptions):
    """WeakSAM's settings: the proposals' (inherited), the scorer's, Algorithm 2's and the merge's."""

    scorer: str = setting("cam", help="proposal scores: cam (training-free) or wsod (a trained head)")
    cam: str | None = setting(None, help="CAM classifier checkpoint (default: the shipped CamVid one)")
    wsod: str | None = setting(None, help="scorer wsod: the WSOD head checkpoint")
    det_nms: float = setting(0.4, help="detections: per-class NMS IoU")
    tau_s: float = setting(0.5, help="Algorithm 2: normalised score threshold")
    tau_o: float = setting(0.85, help="Algorithm 2: containment threshold")
    pgt_variant: str = setting("paper", help="Algorithm 2: paper or authors (their code's normalisation)")
    overlap: str = setting("score", help="class overlaps in the map: score or unlabeled")

    def validate(self, source: str = "weaksam options") -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"{source}: scorer {self.scorer!r} unknown; choose one of {SCORERS}")
        if self.scorer == "wsod" and not self.wsod:
            raise ValueError(f"{source}: scorer wsod needs the `wsod` option (a WSOD head checkpoint)")
        if self.pgt_variant not in PGT_VARIANTS:
            raise ValueError(
                f"{source}: pgt_variant {self.pgt_variant!r} unknown; choose one of {PGT_VARIANTS}"
            )
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"{source}: overlap {self.overlap!r} unknown; choose one of {OVERLAP_RULES}")
        super().validate(source)


def box_cam_scores(cams: torch.Tensor, boxes: np.ndarray, classes: list[int]) -> np.ndarray:
    """RxK: sqrt(mean CAM inside the box x share of the class's CAM mass inside it), per class
    (CxHxW normalised CAMs; sums from an integral image per class)."""
    h, w = cams.shape[-2:]
    integral = torch.nn.functional.pad(cams[classes].double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    b = np.clip(np.round(boxes), 0, [w, h, w, h]).astype(int)
    x0, y0, x1, y1 = (torch.as_tensor(b[:, i]) for i in range(4))
    total = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    area = ((x1 - x0) * (y1 - y0)).clamp(min=1)
    mass = integral[:, -1, -1].clamp(min=1e-8)[:, None]
    return torch.sqrt((total / area).clamp(min=0) * (total / mass).clamp(min=0)).T.float().numpy()


def detections_from_scores(
    boxes: np.ndarray, scores: np.ndarray, classes: list[int], iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RxK proposal scores -> per-class NMS -> (boxes Dx4, scores D, labels D)."""
    out_b, out_s, out_l = [], [], []
    tb = torch.as_tensor(boxes, dtype=torch.float32)
    for k, c in enumerate(classes):
        s = torch.as_tensor(scores[:, k], dtype=torch.float32)
        keep = nms(tb, s, iou).numpy()
        out_b.append(boxes[keep])
        out_s.append(scores[keep, k])
        out_l.append(np.full(len(keep), c))
    if not out_b:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)
    return np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_l)


class WeakSAMLabeler:
    name = "weaksam"
    reads = frozenset({"tags"})

    def __init__(
        self,
        engine: PromptableSegmenter,
        options: WeakSAMOptions | None = None,
        cams: CamPredictor | None = None,
    ) -> None:
        self.engine = engine
        self.options = options or WeakSAMOptions()
        self.options.validate()
        self._cams = cams
        self._wsod = None

    @property
    def cams(self) -> CamPredictor:
        if self._cams is None:
            self._cams = cam_predictor(self.options.cam, "weaksam")
        return self._cams

    @property
    def wsod(self):
        if self._wsod is None:
            from models.io import load_once
            from models.weaksam.wsod import load_wsod

            self._wsod = load_once(load_wsod, self.options.wsod, what="WSOD checkpoint")
        return self._wsod

    def detect(self, image: np.ndarray, handle: ImageHandle, tags: list[int]):
        """Steps 1-4: (proposals, detections (boxes, scores, labels), PGT indices into detections)."""
        o = self.options
        cams = self.cams(image)
        check_deadline()  # between steps; the proposals check it between their chunks too
        proposals = weaksam_proposals(self.engine, handle, cams, tags, o)
        if len(proposals) == 0:
            empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
            return proposals, empty, np.zeros(0, int)
        check_deadline()
        if o.scorer == "cam":
            scores = box_cam_scores(cams, proposals.boxes, tags)
        else:
            scores = wsod_proposal_scores(self.wsod, image, proposals.boxes)[:, tags]
        det = detections_from_scores(proposals.boxes, scores, tags, o.det_nms)
        pgt = adaptive_pgt(*det, tags=tags, tau_s=o.tau_s, tau_o=o.tau_o, variant=o.pgt_variant)
        return proposals, det, pgt

    def instances(
        self, image: np.ndarray, handle: ImageHandle, tags: list[int], result: RefineResult | None = None
    ) -> tuple[list[np.ndarray], list[dict]]:
        """Steps 1-5 for one image: the pseudo instance masks (HxW bool) and their records
        (class_id, box, score)."""
        result = result if result is not None else RefineResult(labels=np.empty(0))
        bad = [t for t in tags if t >= self.cams.num_classes]
        if bad:
            raise ValueError(
                f"weak: tags {bad} are out of range for the CAM classifier's {self.cams.num_classes} classes"
            )
        proposals, (boxes, scores, labels), pgt = self.detect(image, handle, tags)
        check_deadline()
        result.extra = {"proposals": len(proposals), "detections": len(boxes), "pseudo_boxes": len(pgt)}
        found = box_instances(
            self.engine, handle, boxes[pgt], labels[pgt].tolist(), scores[pgt].tolist(), result
        )
        records = [
            {"class_id": c, "box": [round(float(v), 1) for v in boxes[i]], "score": round(s, 4)}
            for i, (c, _, s) in zip(pgt, found)
        ]
        return [m for _, m, _ in found], records

    def refine(self, image: ImageHandle | np.ndarray, weak: WeakLabels, **_: object) -> RefineResult:
        if not isinstance(image, np.ndarray):
            raise ValueError("weaksam: needs the image pixels (for the CAM), not only a handle")
        handle = ensure_handle(self.engine, image)
        result = RefineResult(labels=np.empty(0))
        masks, records = self.instances(image, handle, sorted({int(t) for t in weak.tags}), result)
        result.instances = [r | {"area": int(m.sum())} for r, m in zip(records, masks)]
        found = [Instance(r["class_id"], m, r["score"]) for r, m in zip(records, masks)]
        result.labels = merge_instances(weak.size, found, weak.sparse_map(), self.options.overlap)
        return result


def wsod_proposal_scores(wsod, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """RxC class scores of proposals from a trained WSOD head (at its training scale)."""
    from models.students import normalize, pad_to_multiple
    from models.weaksam.wsod import detection_scores

    head, meta = wsod
    scale = float(meta.get("base_scale", 1.0))
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    if scale != 1.0:
        h, w = image.shape[:2]
        x = torch.nn.functional.interpolate(
            x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False
        )
    x, _ = pad_to_multiple(normalize(x))
    with torch.inference_mode():
        out = head(x, [torch.as_tensor(boxes, dtype=torch.float32) * scale])[0]
    return detection_scores(out).numpy()
