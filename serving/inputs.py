"""Request models of the HTTP routes: strict types and every per-request cap, checked before work.

Numbers are strict (no `true`, no `"1"`, no `1.0` where an integer is meant), unknown keys are
refused, and every list has a cap from the service configuration, so a request's work is bounded
by the time it reaches a route. Error locations name the field (`prompts[2].labels[0]`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator

from models.config import field_types, strip_optional
from serving.config import ServiceConfig
from serving.errors import ApiError

Number = StrictFloat | StrictInt
Label = Annotated[StrictInt, Field(ge=0, le=1)]
ClassId = Annotated[StrictInt, Field(ge=0, le=254)]
XY = tuple[Number, Number]
MAX_SCRIBBLE_WIDTH = 256  # pixels; a wider stroke is a coarse mask, send it as one


def _box_ok(box: tuple[float, float, float, float] | None, where: str) -> None:
    if box is None:
        return
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{where} = {list(box)} must have x0 < x1 and y0 < y1 (a box with area)")


def prompt_model(config: ServiceConfig) -> type[BaseModel]:
    """The /predict prompt model with the configured cap on points per prompt."""

    class PromptIn(BaseModel):
        """One prompt in original-image pixels: points [[x, y], ...] with labels (1 fg, 0 bg), a box
        [x0, y0, x1, y1], and/or the logits_id of an earlier prediction on the same image (SAM's mask
        input for the next click)."""

        model_config = ConfigDict(extra="forbid")
        points: list[XY] | None = Field(
            default=None, max_length=config.max_points_per_prompt, examples=[[[240.0, 180.0]]]
        )
        labels: list[Label] | None = Field(
            default=None, max_length=config.max_points_per_prompt, examples=[[1]]
        )
        box: tuple[Number, Number, Number, Number] | None = Field(default=None, examples=[None])
        mask_input_id: Annotated[str, Field(max_length=64)] | None = Field(default=None, examples=[None])

        @model_validator(mode="after")
        def _consistent(self) -> PromptIn:
            if self.points is None and self.box is None and self.mask_input_id is None:
                raise ValueError("empty prompt: give points with labels, a box or a mask_input_id")
            if (self.points is None) != (self.labels is None):
                raise ValueError("points and labels go together")
            if self.points is not None and len(self.points) != len(self.labels or []):
                raise ValueError(f"{len(self.points)} points but {len(self.labels or [])} labels")
            if self.points is not None and not self.points:
                raise ValueError("points: give at least one point (or leave points out)")
            _box_ok(self.box, "box")
            return self

    return PromptIn


def weak_model(config: ServiceConfig) -> type[BaseModel]:
    """The /refine weak-label model (the schema of `models.labels.schema`, strict, with the caps)."""

    class PointIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: Number
        y: Number
        class_id: ClassId

    class ScribbleIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        class_id: ClassId
        points: list[XY] = Field(min_length=1, max_length=config.max_scribble_points)
        width: Annotated[StrictInt, Field(ge=1, le=MAX_SCRIBBLE_WIDTH)] = 3

    class BoxIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        class_id: ClassId
        box: tuple[Number, Number, Number, Number]

        @model_validator(mode="after")
        def _area(self) -> BoxIn:
            _box_ok(self.box, "box")
            return self

    class WeakIn(BaseModel):
        """Weak labels of one image (schema of `models.labels.schema`; width/height default to the image's)."""

        model_config = ConfigDict(extra="forbid")
        version: Literal[1, 2] | None = None
        width: StrictInt | None = None
        height: StrictInt | None = None
        instances: StrictBool = False
        points: list[PointIn] = Field(default_factory=list, max_length=config.max_weak_labels)
        scribbles: list[ScribbleIn] = Field(default_factory=list, max_length=config.max_weak_labels)
        boxes: list[BoxIn] = Field(default_factory=list, max_length=config.max_weak_labels)
        tags: list[ClassId] = Field(default_factory=list, max_length=255)
        image: Annotated[str, Field(max_length=1024)] | None = None

        @model_validator(mode="after")
        def _caps(self) -> WeakIn:
            count = len(self.points) + len(self.scribbles) + len(self.boxes)
            if count > config.max_weak_labels:
                raise ValueError(
                    f"{count} points/scribbles/boxes exceed the limit of {config.max_weak_labels}"
                )
            vertices = sum(len(s.points) for s in self.scribbles)
            if vertices > config.max_scribble_points:
                raise ValueError(
                    f"{vertices} scribble points exceed the limit of {config.max_scribble_points}"
                )
            return self

    return WeakIn


def strict_options(options_cls: type, values: dict[str, Any], field: str = "options") -> None:
    """Refuse option values whose JSON type is not the option's (`"100"` or `100.0` for an int,
    `1` for a bool); unknown keys are left to the labeler's own check, which names them."""
    types_ = field_types(options_cls)
    for key, value in values.items():
        if key not in types_:
            continue
        kind, optional = strip_optional(types_[key])
        if value is None and optional:
            continue
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(kind, True)
        if not ok:
            name = getattr(kind, "__name__", str(kind))
            raise ApiError(400, f"{field}.{key}: expected a {name}, got {value!r}", f"{field}.{key}")
