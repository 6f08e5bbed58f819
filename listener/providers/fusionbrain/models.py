"""What the client sends and what it hands back: plain frozen values, no HTTP.

The `*Answer` models are the API's answers as the client accepts them: strict pydantic
models of the documented shapes (and the variants the real service sends). Whatever does
not fit is a "malformed answer" for the client, never a value read by guesswork. Where
a field is informational only, it is read leniently so that a once-only result is not
thrown away for it; every such leniency is named in the field's comment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr

from listener.prompt import cap_negative_prompt, truncate_prompt
from listener.sanitize import clean

FINAL_STATES = frozenset({"DONE", "FAIL", "CANCEL"})


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    style: str
    negative_prompt: str = ""

    def params(self) -> dict[str, object]:
        """The `params` part of a run request. Prompts are cut here, in one place, so
        that whatever a row holds, the API receives what it accepts."""
        params: dict[str, object] = {
            "type": "GENERATE",
            "numImages": 1,
            "width": self.width,
            "height": self.height,
            "style": self.style,
            "generateParams": {"query": truncate_prompt(self.prompt)},
        }
        negative = cap_negative_prompt(self.negative_prompt)
        if negative:
            params["negativePromptDecoder"] = negative
        return params


@dataclass(frozen=True)
class Accepted:
    """The API took the run: it counts against the quota from now on."""

    uuid: str
    status_time: float


@dataclass(frozen=True)
class GenerationStatus:
    uuid: str
    state: str
    error_description: str | None = None
    files: tuple[str, ...] = ()
    censored: bool = False
    generation_time: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


# -- the API's answers, as accepted ------------------------------------------------------------


def _tolerant_bool(value: Any) -> Any:
    """`"true"`/`"false"` (any case) as the booleans they spell; null as absent (false).
    Any other non-boolean stays as it is, for the strict check to refuse."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None:
        return False
    return value


def _number_or_none(value: Any) -> Any:
    """Informational numbers: anything but a finite, non-negative number reads as absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


Flag = Annotated[StrictBool, BeforeValidator(_tolerant_bool)]
Informational = Annotated[float | None, BeforeValidator(_number_or_none)]
# A state word: INITIAL, PROCESSING, DONE, FAIL, CANCEL (or a new one, read as pending).
State = Annotated[StrictStr, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z_]+$")]
# Identifiers and short words the API sends back; bounded, so an answer cannot smuggle
# a megabyte into a log line through them.
Short = Annotated[StrictStr, Field(min_length=1, max_length=200)]
# An identifier that goes back into a URL path (`pipeline/status/{uuid}`): URL-safe
# characters only, so an answer cannot steer a later request (`../..`) or forge a line.
Ident = Annotated[
    StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$")
]


class _Answer(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class RunAnswer(_Answer):
    """`POST pipeline/run`: 201 {uuid, status, status_time}, or a 2xx busy body."""

    uuid: Ident | None = None
    status: State | None = None
    # Seconds before polling makes sense; anything unreadable means "poll now".
    status_time: Informational = None
    model_status: Short | None = None
    pipeline_status: Short | None = None


class StatusResult(_Answer):
    files: list[StrictStr] | None = None
    censored: Flag = False


class StatusAnswer(_Answer):
    """`GET pipeline/status/{uuid}`; the pre-2025 API sent `images` and `censored` at the
    top level instead of in `result`."""

    # Ignored: the uuid asked for is the one that counts (a result is not thrown away
    # over an informational field).
    uuid: object = None
    status: State
    errorDescription: StrictStr | None = None
    result: StatusResult | None = None
    images: list[StrictStr] | None = None
    censored: Flag = False
    generationTime: Informational = None

    def to_status(self, uuid: str) -> GenerationStatus:
        result = self.result
        files = result.files if result is not None and result.files is not None else None
        if files is None:
            files = self.images
        censored = (result.censored if result is not None else False) or self.censored
        return GenerationStatus(
            uuid=uuid,
            state=self.status.upper(),
            # API text, made safe where it enters (it becomes a row's reason).
            error_description=clean(self.errorDescription) if self.errorDescription else None,
            files=tuple(files or ()),
            censored=censored,
            generation_time=self.generationTime,
        )


class PipelineEntry(_Answer):
    """One entry of `GET pipelines`; the id comes as `id` (seen) or `uuid` (documented)."""

    id: Ident | int | None = None
    uuid: Ident | None = None
    name: StrictStr | None = None
    # 3.1 or "3.1"; compared part by part.
    version: float | StrictStr | None = None
    status: Short = "ACTIVE"
    type: Short = "TEXT2IMAGE"

    @property
    def pipeline_id(self) -> str | None:
        found = self.id if self.id is not None else self.uuid
        return None if found is None or isinstance(found, bool) else str(found)


class AvailabilityAnswer(_Answer):
    """`GET pipeline/{id}/availability`: {"status"} (seen) or {"pipeline_status"}
    (documented); `model_status` is accepted too, as on run."""

    status: Short | None = None
    pipeline_status: Short | None = None
    model_status: Short | None = None

    @property
    def state(self) -> str | None:
        return self.status or self.pipeline_status or self.model_status
