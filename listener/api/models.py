"""What the client sends and what it hands back: plain frozen values, no HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from listener.api.prompt import cap_negative_prompt, truncate_prompt

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
