"""segment-anything's `ResizeLongestSide`, with at least one pixel on each side.

The official transform rounds the short side to 0 for an image more than 2048 times longer than it
is wide at 1024 (1024 for 512), and the resize then fails; every engine that sizes an image the
way SAM does uses this one instead. For every other image it is the official transform.
"""

from __future__ import annotations

from segment_anything.utils.transforms import ResizeLongestSide as _OfficialResize


class ResizeLongestSide(_OfficialResize):
    """The official transform (`apply_image`, `apply_coords`, `apply_boxes`, ...), whose target
    shape keeps each side at 1 pixel or more."""

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        h, w = _OfficialResize.get_preprocess_shape(oldh, oldw, long_side_length)
        return max(1, h), max(1, w)
