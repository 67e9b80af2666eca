"""WeakSAM (paper 004): image tags -> SAM proposals -> weakly supervised detection -> pseudo instances.

One module per step, each readable on its own:

- `proposals`: WeakSAM-proposals: dense-grid and CAM-peak prompts (Algorithm 1, `models.peaks`),
  SAM's masks as boxes, de-duplicated by NMS.
- `wsod`: the weakly supervised detector's head on the proposals: WSDDN + OICR refinement on
  `torchvision.ops.roi_align`, with MIST's top-15 % seed rule as an option.
- `pgt`: adaptive pseudo ground truth (Algorithm 2), the paper's and the authors' code variant.
- `roi_drop`: RoI drop regularisation (Eq. 1-2) for retraining a torchvision Faster R-CNN.
- `detector`: that Faster R-CNN, its checkpoint and its detections.

`models.refine.weaksam` chains them into a labeler (pseudo boxes -> SAM box prompts -> pseudo
instance masks, WSIS), with the boxes from proposals scored by the CAM or the WSOD head, or from
the retrained detector; `training.weaksam` trains the WSOD head, writes the pseudo instances as
COCO JSON and retrains the detector; `training.weaksam_eval` scores the detector (AP50, CorLoc).
"""
