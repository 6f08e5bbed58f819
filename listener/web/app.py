"""The Starlette application: the gallery, its images, live updates, the operator's
actions, /metrics, /healthz and /readyz.

Every request passes `Guard` first: the Host header must name this server (no DNS
rebinding); a request that changes something must come from this server's own origin
(`Origin` equal to scheme://Host: no cross-site POST from another page in the user's
browser) and, when a token is configured, carry it (a session cookie made at /login, or
`Authorization: Bearer`); reads need the token too unless HTTP_PUBLIC=true.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from listener.errors import DatabaseError, InvalidImage, ListenerError, NotFound, WrongState
from listener.operator import format_duration
from listener.sanitize import clean
from listener.web.thumbs import Thumb, make_thumb, sniff

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
PAGE = 48
SEARCH_WINDOW = 10_000
SEARCH_MAX = 100
PROMPT_MAX = 4000
MAX_IMAGE_BYTES = 64 * 1024 * 1024
RIGHTS_CACHE = 30.0
COOKIE = "fbl_session"
STATUSES = {
    "waiting": "ReadyToGenerate",
    "generating": "Generate",
    "ready": "ReadyToPublish",
    "failed": "Failed",
}
OPEN_PATHS = ("/healthz", "/readyz", "/login", "/static/")
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
]


def session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"fusionbrain-listener web session", hashlib.sha256).hexdigest()


class Guard:
    """Host, Origin and token checks for every request (a plain ASGI middleware, so that
    streamed answers pass through untouched)."""

    def __init__(self, app: ASGIApp, web: Any) -> None:
        self.app = app
        http = web.http
        host, _port = http.address
        hosts = set(http.hosts)
        if http.loopback:
            hosts |= {"localhost", "127.0.0.1", "[::1]", "::1"}
        if host not in ("0.0.0.0", "::"):  # noqa: S104 - compared, not bound
            hosts.add(host.lower())
            hosts.add(f"[{host.lower()}]")
        self.hosts = hosts
        self.token = http.token
        self.session = session_value(http.token) if http.token else None
        self.reads_need_token = http.reads_need_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self.check(scope, headers)
        if problem is not None:
            status, text = problem
            if (
                status == 401
                and scope["method"] == "GET"
                and "text/html" in headers.get("accept", "")
            ):
                target = "/login?" + urlencode({"next": scope["path"]})
                response: Response = RedirectResponse(target, status_code=303)
            else:
                response = PlainTextResponse(text, status_code=status)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def check(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if _hostname(host) not in self.hosts:
            return 400, "unknown Host: this server answers to its configured address only"
        path: str = scope["path"]
        unsafe = scope["method"] in UNSAFE
        if unsafe:
            origin = headers.get("origin")
            scheme = "https" if headers.get("x-forwarded-proto") == "https" else scope["scheme"]
            if origin is None:
                if not self._bearer(headers):
                    return 403, "refused: a change needs the Origin header of this page"
            elif origin.lower() not in (f"{scheme}://{host}".lower(), f"https://{host}".lower()):
                return 403, "refused: a change from another origin"
        if self.token is None or path.startswith(OPEN_PATHS):
            return None
        if (unsafe or self.reads_need_token) and not self.authorised(headers):
            return 401, "the token is needed (log in at /login, or Authorization: Bearer)"
        return None

    def _bearer(self, headers: Headers) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        return (
            self.token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), self.token.encode())
        )

    def authorised(self, headers: Headers) -> bool:
        if self._bearer(headers):
            return True
        cookie = _cookie(headers.get("cookie", ""), COOKIE)
        return (
            self.session is not None
            and cookie is not None
            and hmac.compare_digest(cookie.encode(), self.session.encode())
        )


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";")[:50]:
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


# -- values shown on the page ------------------------------------------------------------------


def _age(now: datetime, then: datetime | None) -> str:
    return "-" if then is None else format_duration(now - then)


def version_of(row: dict[str, Any]) -> str:
    updated = row.get("updated_at")
    return str(int(updated.timestamp() * 1_000_000)) if updated else "0"


class Views:
    def __init__(self, web: Any) -> None:
        self.web = web
        self._rights: tuple[float, dict[str, Any]] | None = None

    @cached_property
    def templates(self) -> Jinja2Templates:
        """Built for the first page: Jinja2 (~1.5 MB for the process's whole life) is not
        imported by a server that only answers /metrics and the probes."""
        from starlette.templating import Jinja2Templates

        templates = Jinja2Templates(directory=str(HERE / "templates"))
        templates.env.globals["status_names"] = STATUSES
        templates.env.globals["status_labels"] = {v: k for k, v in STATUSES.items()}
        return templates

    # -- helpers -----------------------------------------------------------------------

    async def rights(self) -> dict[str, Any]:
        """What the page's login may do, and why not (cached)."""
        now = trio.current_time()
        if self._rights and now - self._rights[0] < RIGHTS_CACHE:
            return self._rights[1]
        try:
            row = await self.web.pages.one("rights") or {}
        except DatabaseError as exc:
            return {"write": False, "why": f"read-only for now: {exc.message}"}
        missing = [f for f in ("retry", "cancel", "enqueue") if not row.get(f)]
        rights = {
            "write": not missing,
            "retry": bool(row.get("retry")),
            "cancel": bool(row.get("cancel")),
            "enqueue": bool(row.get("enqueue")),
            "why": (
                f"read-only: the login {clean(str(row.get('login')), limit=64)} may not "
                f"{', '.join(missing)} (it needs the images_operator role; see README, "
                "Running in production; or set HTTP_DATABASE_URL to an operator's login)"
                if missing
                else ""
            ),
        }
        self._rights = (now, rights)
        return rights

    def card(self, row: dict[str, Any]) -> dict[str, Any]:
        s = self.web.settings
        now = row["now"]
        thumb = self.web.thumbs.known(row["id"])
        if row.get("image_width") and row.get("image_height"):  # recorded with the image
            size = f"{row['image_width']}×{row['image_height']}"
            media = str(row.get("image_type") or "").upper()
        elif thumb is not None:  # read from its header when the thumbnail was made
            size = f"{thumb.width}×{thumb.height}"
            media = thumb.media_type.removeprefix("image/").upper()
        else:
            size = (
                f"{row['width'] or s.default_image_width}×{row['height'] or s.default_image_height}"
            )
            media = ""
        started, finished = row["generation_started_at"], row["generation_finished_at"]
        took = None
        if started and finished and finished >= started:
            took = (finished - started).total_seconds()
        return {
            "id": row["id"],
            "prompt": clean(row["prompt"], limit=400) + ("…" if row["prompt_cut"] else ""),
            "status": row["status"],
            "final": row["status"] in ("ReadyToPublish", "Failed"),
            "provider": row.get("provider") or self.web.provider_name,
            "style": row["style"] or f"{s.default_style} (default)",
            "size": size,
            "size_known": thumb is not None or bool(row.get("image_width")),
            "media": media,
            "age": _age(now, row["created_at"]),
            "created": row["created_at"].isoformat() if row["created_at"] else "",
            "took": None if took is None else f"{took:.1f}s",
            "error": clean(row["last_error"], limit=400) if row["last_error"] else None,
            "censored": row["censored"],
            "attempts": row["attempts"],
            "has_image": row["has_image"],
            "held": row["held"],
            "version": version_of(row),
        }

    def filters(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        status_key = q.get("status", "")
        status = STATUSES.get(status_key)
        search = " ".join(q.get("q", "").split())[:SEARCH_MAX] or None
        return {"status_key": status_key if status else "", "status": status, "q": search}

    def _query(self, f: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "status": f["status"],
            "q": f["q"],
            "window": SEARCH_WINDOW,
            "before": None,
            "after": None,
            "limit": PAGE,
            **extra,
        }

    def _html(self, request: Request, name: str, context: dict[str, Any], status: int = 200):
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def _error(self, request: Request, status: int, message: str) -> Response:
        return self._html(request, "error.html", {"message": message}, status)

    # -- pages -------------------------------------------------------------------------

    async def gallery(self, request: Request) -> Response:
        f = self.filters(request)
        before = _int(request.query_params.get("before"))
        try:
            rows = await self.web.pages.fetch("page", self._query(f, before=before))
            styles = await self.web.pages.fetch("styles")
            queue = await self.web.pages.one("queue")
        except DatabaseError as exc:
            return self._error(request, 503, exc.message)
        rights = await self.rights()
        cards = [self.card(r) for r in rows]
        more = None
        if len(rows) == PAGE:
            more = "?" + urlencode(
                {k: v for k, v in (("status", f["status_key"]), ("q", f["q"] or "")) if v}
                | {"before": rows[-1]["id"]}
            )
        return self._html(
            request,
            "gallery.html",
            {
                "cards": cards,
                "filters": f,
                "first_page": before is None,
                "more": more,
                "rights": rights,
                "styles": styles,
                "queue": queue or {},
                "provider": self.web.provider_name,
                "default_style": self.web.settings.default_style,
                "search_window": SEARCH_WINDOW,
                "token_session": self.web.http.token is not None,
                "message": _message(request.query_params.get("done")),
            },
        )

    async def fragment(self, request: Request) -> Response:
        """Cards only: rows newer than `after` (with the page's filters), or given `ids`."""
        f = self.filters(request)
        ids_text = request.query_params.get("ids")
        try:
            if ids_text is not None:
                ids = [i for i in (_int(x) for x in ids_text.split(",")[:PAGE]) if i is not None]
                rows = await self.web.pages.fetch("cards", {"ids": ids})
            else:
                after = _int(request.query_params.get("after")) or 0
                rows = await self.web.pages.fetch("page", self._query(f, after=after))
        except DatabaseError as exc:
            return PlainTextResponse(exc.message, status_code=503)
        rights = await self.rights()
        response = self._html(
            request, "cards.html", {"cards": [self.card(r) for r in rows], "rights": rights}
        )
        try:  # the page's queue line, kept current with the cards
            queue = await self.web.pages.one("queue") or {}
            response.headers["X-Queue"] = f"{queue.get('waiting', 0)} {queue.get('generating', 0)}"
        except DatabaseError:
            pass
        return response

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self.web.live.events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _image_row(self, id_: int) -> dict[str, Any] | None:
        return await self.web.pages.one("image", {"id": id_, "max": MAX_IMAGE_BYTES})

    async def thumb(self, request: Request) -> Response:
        id_ = request.path_params["id"]
        version = request.query_params.get("v", "")
        cache = self.web.thumbs
        thumb: Thumb | None = cache.get(id_, version) if version else None
        if thumb is None:
            try:
                row = await self._image_row(id_)
            except DatabaseError as exc:
                return PlainTextResponse(exc.message, status_code=503)
            if row is None or row["base64"] is None:
                return PlainTextResponse("no image", status_code=404)
            actual = version_of(row)
            if version and version != actual:  # the row changed since the page was made
                return RedirectResponse(f"/thumb/{id_}?v={actual}", status_code=307)
            try:
                thumb = await trio.to_thread.run_sync(make_thumb, row["base64"])
            except InvalidImage as exc:
                return PlainTextResponse(f"not an image: {exc.message}", status_code=415)
            cache.put(id_, actual, thumb)
            version = actual
        etag = f'"{id_}-{version}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(
            thumb.data,
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=31536000, immutable", "ETag": etag},
        )

    async def image(self, request: Request) -> Response:
        id_ = request.path_params["id"]
        try:
            row = await self._image_row(id_)
        except DatabaseError as exc:
            return PlainTextResponse(exc.message, status_code=503)
        if row is None or not row["has_image"]:
            return PlainTextResponse("no image", status_code=404)
        if row["base64"] is None:
            return PlainTextResponse("image too large to show", status_code=413)
        etag = f'"{id_}-{version_of(row)}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        try:
            data = await trio.to_thread.run_sync(_b64decode, row["base64"])
        except ValueError:
            return PlainTextResponse("not an image: invalid base64", status_code=415)
        media_type = sniff(data)
        if media_type is None:
            return PlainTextResponse("not an image: neither PNG nor JPEG", status_code=415)
        return Response(
            data,
            media_type=media_type,
            headers={
                "Cache-Control": "private, max-age=3600",
                "ETag": etag,
                "Content-Disposition": f'inline; filename="image-{id_}.{media_type[6:]}"',
            },
        )

    # -- changes -----------------------------------------------------------------------

    async def _change(self, request: Request, right: str, query: str, params: dict) -> Response:
        rights = await self.rights()
        if not rights.get(right):
            return self._error(request, 403, rights.get("why") or "read-only")
        try:
            row = await self.web.pages.one(query, params)
        except (NotFound, WrongState) as exc:
            return self._error(request, 409 if isinstance(exc, WrongState) else 404, exc.message)
        except ListenerError as exc:
            status = 400 if getattr(exc, "exit_code", 0) == 2 else 503
            return self._error(request, status, exc.message)
        id_ = (row or {}).get("id")
        back = _back(request)
        sep = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{sep}done={query}&id={id_}", status_code=303)

    async def retry(self, request: Request) -> Response:
        return await self._change(request, "retry", "retry", {"id": request.path_params["id"]})

    async def cancel(self, request: Request) -> Response:
        return await self._change(request, "cancel", "cancel", {"id": request.path_params["id"]})

    async def enqueue(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10, max_part_size=PROMPT_MAX * 4)
        prompt = str(form.get("prompt") or "")[:PROMPT_MAX]
        params = {
            "prompt": prompt,
            "style": str(form.get("style") or "").strip() or None,
            "width": _int(str(form.get("width") or "")),
            "height": _int(str(form.get("height") or "")),
            "negative_prompt": str(form.get("negative_prompt") or "").strip()[:PROMPT_MAX] or None,
        }
        return await self._change(request, "enqueue", "enqueue", params)

    # -- login -------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self._html(request, "login.html", {"next": _safe_next(request), "wrong": False})

    async def login(self, request: Request) -> Response:
        token = self.web.http.token
        form = await request.form(max_files=0, max_fields=3, max_part_size=1024)
        given = str(form.get("token") or "").strip()
        target = _safe_next(request, str(form.get("next") or "/"))
        if token is None:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(given.encode(), token.encode()):
            await trio.sleep(0.5)  # guessing is slow
            return self._html(request, "login.html", {"next": target, "wrong": True}, 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=30 * 86400,
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # -- for machines ------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        await self.web.refresh_queue()
        return Response(generate_latest(self.web.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        verdict = await self.web.health.healthz()
        return JSONResponse(verdict.body("healthy"), status_code=200 if verdict.ok else 503)

    async def readyz(self, request: Request) -> Response:
        verdict = await self.web.health.readyz()
        return JSONResponse(verdict.body("ready"), status_code=200 if verdict.ok else 503)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _b64decode(text: str) -> bytes:
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    return base64.b64decode(text, validate=False)


def _message(done: str | None) -> str | None:
    return {
        "retry": "Sent back to the queue.",
        "cancel": "Cancelled.",
        "enqueue": "Queued.",
    }.get(done or "")


def _back(request: Request) -> str:
    """Where a change returns to: the page it came from (same origin only), clean of
    the previous change's message."""
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if parts.netloc and parts.netloc.lower() != request.headers.get("host", "").lower():
        return "/"
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith(("done=", "id=")))
    return (parts.path or "/") + (f"?{query}" if query else "")


def _safe_next(request: Request, value: str | None = None) -> str:
    target = value if value is not None else request.query_params.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:200]


def build_app(web: Any) -> ASGIApp:
    v = Views(web)
    routes = [
        Route("/", v.gallery),
        Route("/fragment", v.fragment),
        Route("/events", v.events),
        Route("/thumb/{id:int}", v.thumb),
        Route("/image/{id:int}", v.image),
        Route("/rows/{id:int}/retry", v.retry, methods=["POST"]),
        Route("/rows/{id:int}/cancel", v.cancel, methods=["POST"]),
        Route("/enqueue", v.enqueue, methods=["POST"]),
        Route("/login", v.login_form),
        Route("/login", v.login, methods=["POST"]),
        Route("/logout", v.logout, methods=["POST"]),
        Route("/metrics", v.metrics),
        Route("/healthz", v.healthz),
        Route("/readyz", v.readyz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    return Guard(app, web)
