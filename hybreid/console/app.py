"""The console's web application (Starlette): server-side pages from Jinja2 templates, the
JSON read API they are built from, and the live events as server-sent events.

Read-only: every route but the search by picture is a GET, and nothing is ever written.
Every string from a payload or the gallery reaches a page through Jinja2's autoescaping,
and the Content-Security-Policy lets the page run only the console's own script file and
load only its own style sheet and images. With a token, every request must carry it
(``Authorization: Bearer``, or the cookie ``/login?token=`` sets).
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from hybreid.console.live import LiveFeed
from hybreid.console.reads import ConsoleReads, parse_iso
from hybreid.console.search import MAX_UPLOAD_BYTES, ImageSearch
from hybreid.console.timeline import timeline
from hybreid.errors import UserError

HERE = Path(__file__).parent
COOKIE = "hybreid_console"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LARGEST_ID = 2 ** 63
MAX_TOP_K = 100
STREAM_WAIT_S = 15.0  # a comment line at least this often keeps proxies from closing the stream


def create_app(reads: ConsoleReads, live: LiveFeed | None = None, token: str | None = None,
               search: ImageSearch | None = None, figures: list[dict] | None = None) -> Starlette:
    # Escaping on for every template and value, stated here rather than left to a default.
    templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                                       autoescape=True))

    def page(request: Request, name: str, **context) -> Response:
        return templates.TemplateResponse(request, name, {"live": live is not None, "search": search is not None,
                                                          "figures": figures is not None, **context})

    def with_states(rows: list[dict]) -> list[dict]:
        """The gallery's cameras with the broker's word on each (a camera never seen in a
        sighting still shows once its status arrives)."""
        known = {f"{c['site']}/{c['camera_id']}": {**c, "state": None} for c in rows}
        for state in live.camera_states() if live else ():
            key = f"{state['site']}/{state['camera_id']}"
            known[key] = {**known.get(key, {"site": state["site"], "camera_id": state["camera_id"], "sightings": 0,
                                            "last_seen": None}), "state": state["state"]}
        return [known[key] for key in sorted(known)]

    async def index(request: Request) -> Response:
        overview = await run_in_threadpool(reads.overview)
        shown = list(live.events)[-20:] if live else []  # a copy: the MQTT thread appends
        return page(request, "index.html", overview=overview, cameras=with_states(overview["cameras"]),
                    events=[event for _, event in reversed(shown)], last_event=shown[-1][0] if shown else 0)

    async def identities(request: Request) -> Response:
        listing = await run_in_threadpool(reads.identities, _int(request, "page", 1))
        return page(request, "identities.html", listing=listing)

    async def identity(request: Request) -> Response:
        found = await run_in_threadpool(reads.identity, _path_int(request))
        if found is None:
            raise HTTPException(404, "no such identity")
        return page(request, "identity.html", identity=found, timeline=timeline(found["sightings"]))

    async def figures_page(request: Request) -> Response:
        if figures is None:
            raise HTTPException(404, "the console was started without --figures")
        return page(request, "figures.html", records=figures)

    async def api_overview(request: Request) -> Response:
        overview = await run_in_threadpool(reads.overview)
        broker = ({"connected": live.connected.is_set(), "refused": dict(live.refused)} if live else None)
        return JSONResponse({**overview, "cameras": with_states(overview["cameras"]), "broker": broker})

    async def api_identities(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reads.identities, _int(request, "page", 1)))

    async def api_identity(request: Request) -> Response:
        found = await run_in_threadpool(reads.identity, _path_int(request))
        if found is None:
            raise HTTPException(404, "no such identity")
        return JSONResponse(found)

    async def api_sightings(request: Request) -> Response:
        query = request.query_params
        return JSONResponse(await run_in_threadpool(
            reads.sightings, query.get("camera"), parse_iso(query.get("since"), "since"),
            parse_iso(query.get("until"), "until"), _int(request, "identity", None)))

    async def api_counts(request: Request) -> Response:
        query = request.query_params
        return JSONResponse(await run_in_threadpool(reads.counts, query.get("camera"),
                                                    parse_iso(query.get("since"), "since"),
                                                    parse_iso(query.get("until"), "until")))

    async def api_merges(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reads.merges, _int(request, "limit", 100)))

    async def api_cameras(request: Request) -> Response:
        return JSONResponse({"cameras": with_states(await run_in_threadpool(reads.cameras))})

    async def event_stream(request: Request) -> Response:
        if live is None:
            raise HTTPException(404, "the console was started without a broker")

        # From the last event the page showed (`after`) or, when the browser reconnects, the last
        # it received (Last-Event-ID): an event published in between is not lost.
        given = request.headers.get("last-event-id") or request.query_params.get("after") or ""
        start = _whole_number(given)

        async def stream():
            number = start if start is not None else (live.events[-1][0] if live.events else 0)
            while not await request.is_disconnected():
                fresh = await run_in_threadpool(live.events_after, number, STREAM_WAIT_S)
                if not fresh:
                    yield ": still here\n\n"
                for number, event in fresh:
                    yield f"id: {number}\ndata: {json.dumps(event)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def thumbnail(request: Request) -> Response:
        seq = _whole_number(request.path_params["seq"])
        if seq is None:
            raise HTTPException(404, "no such thumbnail")
        found = await run_in_threadpool(reads.thumbnail, request.path_params["site"], request.path_params["camera"],
                                        seq)
        if found is None:
            raise HTTPException(404, "no such thumbnail")
        return Response(found, media_type="image/jpeg")  # checked by decoding when the matcher took it

    async def search_by_picture(request: Request) -> Response:
        """The identities nearest a JPEG or PNG sent as the request's body (nothing is stored)."""
        if search is None:
            raise HTTPException(404, "the console was started without --artifact: no search by picture")
        if request.headers.get("content-type", "") not in ("image/jpeg", "image/png"):
            raise UserError("send the picture as the body, with Content-Type image/jpeg or image/png")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                raise UserError(f"the picture is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
        top_k = _int(request, "top_k", 5)
        if not 1 <= top_k <= MAX_TOP_K:
            raise UserError(f"top_k must be from 1 to {MAX_TOP_K}, got {top_k}")
        matches = await run_in_threadpool(search.search, bytes(body), top_k)
        return JSONResponse({"matches": matches})

    async def login(request: Request) -> Response:
        """Exchange ``?token=`` for a cookie the browser sends from then on (checked by :class:`_Guard`)."""
        response = RedirectResponse("/", status_code=303)
        if token is not None and hmac.compare_digest(request.query_params.get("token", ""), token):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    routes = [Route("/", index), Route("/identities", identities), Route("/identities/{identity}", identity),
              Route("/api/overview", api_overview), Route("/api/identities", api_identities),
              Route("/api/identities/{identity}", api_identity), Route("/api/sightings", api_sightings),
              Route("/api/counts", api_counts), Route("/api/merges", api_merges), Route("/api/cameras", api_cameras),
              Route("/api/events", event_stream), Route("/login", login),
              Route("/thumbnails/{site}/{camera}/{seq}.jpg", thumbnail),
              Route("/api/search", search_by_picture, methods=["POST"]), Route("/figures", figures_page),
              Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")]
    return Starlette(routes=routes, exception_handlers={UserError: _bad_request, HTTPException: _http_error},
                     middleware=[Middleware(_Guard, token=token)])


class _Guard:
    """The token (when there is one) on every request but ``/login``, and the security headers
    on every response (pure ASGI: a streamed response passes through untouched)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [(k, v) for k, v in message["headers"]
                                      if k.decode().lower() not in _LOWER_HEADERS] + _HEADER_BYTES
            await send(message)

        request = Request(scope)
        if self.token is not None and scope["path"] != "/login" and not _carries(request, self.token):
            response = PlainTextResponse("this console needs its token: open /login?token=... once, or send "
                                         "Authorization: Bearer <token>", status_code=401)
            await response(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)


_LOWER_HEADERS = {name.lower() for name in SECURITY_HEADERS}
_HEADER_BYTES = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


def _carries(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = header[len("Bearer "):] if header.startswith("Bearer ") else request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), token.encode())


def _whole_number(text: str) -> int | None:
    """``text`` as a whole number a database holds (ASCII digits, under 2^63), else None."""
    fits = text.isascii() and text.isdigit() and len(text) <= len(str(LARGEST_ID))  # int() refuses 4,300+ digits
    return int(text) if fits and int(text) < LARGEST_ID else None


def _int(request: Request, name: str, default: int | None) -> int | None:
    text = request.query_params.get(name)
    if text in (None, ""):
        return default
    value = _whole_number(text)
    if value is None:
        raise UserError(f"{name} must be a whole number from 0 to {LARGEST_ID - 1}, got {text[:40]!r}")
    return value


def _path_int(request: Request) -> int:
    identity = _whole_number(request.path_params["identity"])
    if identity is None:
        raise HTTPException(404, "no such identity")
    return identity


async def _bad_request(request: Request, exc: UserError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
