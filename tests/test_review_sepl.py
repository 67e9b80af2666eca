"""Issue 25: SEPL's class-overlap rule and the background class, on a hand-worked 1x10 row.

pseudo (background class 0):  1 1 1 0 0 2 2 2 0 0
S1 (columns 0-4, 5 px):       its overlap with class 1 is 3 px: o_s = 3/5 = 0.6 > t1 -> class 1 keeps it
S2 (columns 4-7, 4 px):       its overlap with class 2 is 3 px: o_s = 3/4 = 0.75 > t1 -> class 2 keeps it
Column 4 lies in both kept masks (a class overlap); columns 8-9 in none (background: no class claims them).
Without a background class the same row has 255 where it has 0 (else 0 would be one more class).
"""

from __future__ import annotations

import numpy as np
import pytest

from models.io import UNLABELED
from models.labels.sepl import SEPLLabeler, SEPLOptions

U = UNLABELED
PSEUDO = np.array([[1, 1, 1, 0, 0, 2, 2, 2, 0, 0]], np.uint8)
S1 = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]], bool)
S2 = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 0, 0]], bool)
NO_WEAK = np.full(PSEUDO.shape, U, np.uint8)


@pytest.mark.parametrize(
    ("overlap", "background", "expected"),
    [
        # `unlabeled`: the overlap pixel stays unlabeled even where the dataset has a background class
        ("unlabeled", 0, [1, 1, 1, 1, U, 2, 2, 2, 0, 0]),
        ("unlabeled", None, [1, 1, 1, 1, U, 2, 2, 2, U, U]),
        # `score`: the overlap pixel goes to class 2 (mean o_s 0.75 beats class 1's 0.6)
        ("score", 0, [1, 1, 1, 1, 2, 2, 2, 2, 0, 0]),
        ("score", None, [1, 1, 1, 1, 2, 2, 2, 2, U, U]),
    ],
)
def test_sepl_overlap_rule_and_background_class(overlap, background, expected) -> None:
    pseudo = PSEUDO if background is not None else np.where(PSEUDO == 0, U, PSEUDO).astype(np.uint8)
    options = SEPLOptions(overlap=overlap, background_class=background)
    labels, records = SEPLLabeler(None, options).enhance([S1, S2], pseudo, NO_WEAK)  # type: ignore[arg-type]
    assert labels[0].tolist() == expected
    assert {r["class_id"]: r["score"] for r in records} == {1: 0.6, 2: 0.75}


def test_weak_labels_win_over_the_overlap_and_the_background() -> None:
    weak = NO_WEAK.copy()
    weak[0, 4], weak[0, 9] = 1, 2  # a weak label on the overlap pixel and one on a background pixel
    options = SEPLOptions(overlap="unlabeled", background_class=0)
    labels, _ = SEPLLabeler(None, options).enhance([S1, S2], PSEUDO, weak)  # type: ignore[arg-type]
    assert labels[0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0, 2]
