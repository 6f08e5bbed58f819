"""GigaChat (Kandinsky through chat) as an engine `Provider`: draw, then download.

submit = the paid draw: one chat call with `function_call: "auto"`, the style's system
message first when the style has one, and the row's prompt wrapped in
GIGACHAT_PROMPT_TEMPLATE ("Нарисуй: {prompt}"). The reply's text carries
`<img src="FILE_ID" .../>`; the file id is returned as the handle, which the engine
makes durable in the row's `uuid` before anything else, so a crash after the reply
downloads instead of drawing again.

    finish_reason blacklist        Refused(censored=True): the model will not draw it
    no image tag                   Refused with a short excerpt of what the model said
    unreadable reply, unusable id  ApiOutcomeUnknown (MalformedDraw): it may have drawn

outcome = the free download of that file: Ready(base64 of the JPEG) at the first ask.
probe = the models list: a token and an authenticated call, never a draw.
"""

from __future__ import annotations

import base64
import logging

from listener.engine.ports import Outcome, Ready, Refused, Request, Submitted
from listener.errors import ApiCredentials, ApiError
from listener.providers.gigachat.client import GigaChatClient
from listener.providers.gigachat.edge import MalformedDraw, excerpt
from listener.providers.gigachat.models import find_image, usable_file_id
from listener.providers.gigachat.settings import PROMPT_TEMPLATE
from listener.providers.gigachat.spec import NAME, TITLE, traits
from listener.sanitize import clean

log = logging.getLogger("listener.gigachat")

CREDENTIALS_HELP = "check GIGACHAT_CREDENTIALS and GIGACHAT_SCOPE (`listener provider check`)"
# What the model said instead of drawing, kept in the row's reason.
REFUSAL_EXCERPT = 160


class GigaChatProvider:
    name = NAME
    title = TITLE
    credentials_help = CREDENTIALS_HELP

    def __init__(self, client: GigaChatClient, *, prompt_template: str = PROMPT_TEMPLATE) -> None:
        self.client = client
        self.prompt_template = prompt_template
        self.traits = traits(client.timeout)
        self._model_refused = False
        self._probed = False

    def messages(self, request: Request) -> list[dict[str, str]]:
        messages = []
        if request.style_prompt:
            messages.append({"role": "system", "content": request.style_prompt})
        user = self.prompt_template.replace("{prompt}", request.prompt)
        messages.append({"role": "user", "content": user})
        return messages

    async def submit(self, request: Request) -> Submitted | Refused:
        try:
            answer = await self.client.draw(
                self.messages(request),
                request_id=f"images-{request.row_id}-attempt-{request.attempt}",
            )
        except ApiCredentials as exc:
            self._model_refused = "HTTP 404" in exc.message
            raise
        choice = answer.choices[0]
        content = choice.message.content or ""
        said = excerpt(content, REFUSAL_EXCERPT) or "nothing"
        if choice.finish_reason == "blacklist":
            return Refused(f"censored: GigaChat declined the topic: {said}", censored=True)
        file_id = find_image(content)
        if file_id is None:
            reason = clean(choice.finish_reason or "none", limit=32)
            return Refused(f"no image: GigaChat answered (finish_reason {reason}): {said}")
        if not usable_file_id(file_id):
            raise MalformedDraw(
                f"draw: an image tag with an unusable file id: {clean(file_id, limit=60)}"
            )
        return Submitted(handle=file_id)

    async def outcome(self, handle: str) -> Outcome:
        data = await self.client.download(handle)
        return Ready(base64.b64encode(data).decode("ascii"))

    async def probe(self) -> None:
        listed = await self.client.models()
        ids = [m.id for m in listed.data]
        if not self._probed:
            self._probed = True
            await self._first_look(ids)
        if self._model_refused:
            if self.client.model not in ids:
                raise ApiCredentials(
                    clean(
                        f"GIGACHAT_MODEL {self.client.model} is not offered by "
                        f"GIGACHAT_BASE_URL (it lists: {', '.join(ids[:12]) or 'nothing'})"
                    )
                )
            self._model_refused = False

    async def _first_look(self, ids: list[str]) -> None:
        """At start: say what the account shows (never a reason to stop)."""
        model = self.client.model
        if model not in ids:
            log.warning(
                "GIGACHAT_MODEL %s is not among the models this host lists (%s): drawing "
                "may answer 404 No such model",
                clean(model, limit=100),
                clean(", ".join(ids[:12]) or "none", limit=400),
            )
        try:
            balance = await self.client.balance()
        except ApiError as exc:
            log.debug("GigaChat balance not read: %s", exc.message)
            return
        if balance is not None and balance.balance:
            shown = ", ".join(f"{b.usage} {b.value:g}" for b in balance.balance[:12])
            log.info("GigaChat balance (prepaid tokens left): %s", clean(shown, limit=400))
