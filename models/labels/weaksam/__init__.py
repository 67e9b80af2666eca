"""WeakSAM (paper 004): image tags -> SAM proposals -> weakly supervised detection -> pseudo instances.

The labeling steps, one module each:

- `proposals`: WeakSAM-proposals: dense-grid and CAM-peak prompts (Algorithm 1, `models.labels.peaks`),
  SAM's masks as boxes, de-duplicated by NMS.
- `pgt`: adaptive pseudo ground truth (Algorithm 2), the paper's and the authors' code variant.
- `labeler`: the chain as a labeler (pseudo boxes -> SAM box prompts -> pseudo instance masks, WSIS),
  with the boxes from proposals scored by the CAM or the WSOD head, or from the retrained detector.

The networks it trains and uses live with the other networks in `models.students`: `wsod` (the WSOD
head: WSDDN + OICR on `torchvision.ops.roi_align`, MIST's top-15 % seed rule as an option),
`detector` (the retrained torchvision Faster R-CNN) and `roi_drop` (RoI drop, Eq. 1-2).
`training.weaksam` trains the WSOD head, writes the pseudo instances as COCO JSON and retrains the
detector; `training.weaksam_eval` scores the detector (AP50, CorLoc).
"""
