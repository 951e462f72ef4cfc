"""The FastAPI app of ``tokenflow serve``: the page, its JSON API and the collection's thumbnails.

Endpoints (every error is JSON ``{"error": message}`` with a 4xx status):

* ``GET /``: the page (plain HTML, CSS and JS from ``static/``; no build step).
* ``GET /api/info``: the collection (kind, size, backbone), the plans offered (the trained plan first,
  and for each plan ``plan_source``: ``"trained"``, the model folder's plan with its learned weights,
  or ``"fresh"``, built anew), the fusion weights, the limits.
* ``POST /api/search``: ``{"query": TEXT, "k": 10, "plans": ["tokenflow", "max-avg"],
  "hparams": {"tokenflow": {"lam": 20}}, "w_global": 1, "w_fine": 1}`` -> the top k per plan
  with ``score = w_global * global + w_fine * fine`` (and each plan's ``plan_source``). Over a text collection the query is an
  image: ``multipart/form-data`` with the JSON in field ``request`` and the file in ``image``.
* ``POST /api/explain``: ``{"query", "item", "plan", "hparams"}`` (or the same multipart) ->
  ``d`` over the patch grid and ``e`` per word (``weights``: ``"plan"``, the plan's own token
  weights, or ``"score-share"``, each token's share of the fine score; ``weights_label`` says it
  in words), the words (``tokens``; ``tokens_note`` when they are numbered instead), the strongest
  pairs ``T_hat x c`` and their ``markers`` (one per patch), the scores
  (:mod:`tokenflow.serve.explain`).
* ``GET /media/{item}``: a PNG thumbnail of an item (a video's middle frame), looked up by the
  item's id in the index: the client never names a path.

Safety defaults: the server listens on 127.0.0.1 and answers only requests addressed to a
loopback host name (no DNS rebinding); request bodies and uploads are capped, uploads are decoded
by PIL under a pixel cap; query length, k, the number of plans and hyperparameter magnitudes are
capped (:class:`~tokenflow.serve.engine.Limits`); responses carry a strict Content-Security-Policy.
:func:`run` and :func:`serve_in_thread` serve with :func:`json_errors_protocol`, so that a request
the HTTP parser refuses before the app sees it (two Host headers, say) gets a JSON 400 as well.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .._extras import require
from ..models.base import DualEncoder
from .engine import Engine, Limits, Query
from .media import RequestError, decode_upload, thumbnail_png

require("fastapi", "serve", "tokenflow serve")
require("python_multipart", "serve", "tokenflow serve (image uploads)")

from fastapi import FastAPI, Request  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402  (also the router's 404 and 405)
from fastapi.responses import FileResponse, JSONResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

from ..errors import UserError  # noqa: E402

__all__ = ["LOOPBACK_HOSTS", "create_app", "default_model_folder", "json_errors_protocol", "run", "serve_in_thread"]

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
THUMBNAILS = 1024  # thumbnails kept in memory
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def default_model_folder(index_dir: str | Path) -> Path:
    """The folder named as the backbone in the index's settings (``index.json``), when it is a folder
    here (``UserError`` otherwise)."""
    path = Path(index_dir) / "index.json"
    try:
        backbone = json.loads(path.read_text()).get("backbone", {})
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the index settings ({e})") from None
    name = backbone.get("name") if isinstance(backbone, dict) else None
    if not name or not Path(name).is_dir():
        raise UserError(f"the index {index_dir} was encoded with backbone {name!r}, which is not a folder here: "
                        "pass --model FOLDER (the backbone that encoded the collection)")
    return Path(name)


def create_app(index_dir: str | Path | Sequence[str | Path], model: DualEncoder | str | Path | None = None, *,
               aligner_names: Sequence[str] | None = None, w_global: float | None = None,
               w_fine: float | None = None,
               limits: Limits = Limits(), media_root: str | Path | None = None,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS, device: str = "cpu",
               check_backbone: bool = True) -> FastAPI:
    """The app over a search index (see the module docstring).

    ``index_dir``: an index folder, a store with its ``index/``, a store in parts, or a list of
    them (as ``tokenflow search --index`` takes). ``model``: a model folder (trained or a bare
    backbone; None: :func:`default_model_folder`), read once and scored by the one scoring path
    (:class:`~tokenflow.models.scoring.TrainedPlan`, :func:`~tokenflow.models.scoring.build_plan`, as
    :func:`~tokenflow.models.scoring.load_scoring` reads it), or a backbone object (no trained plan).
    ``aligner_names``: the plans offered (plus ``"global"``; None: a trained folder's plan, with its
    learned weights, then :data:`DEFAULT_PLANS`, built fresh). ``w_global``, ``w_fine``: None, the
    trained folder's. ``allowed_hosts``: Host headers answered (None: any, e.g. behind a proxy that
    checks them)."""
    from ..index.collections import index_dirs
    from ..models.loading import load_backbone
    from ..models.scoring import TrainedPlan

    dirs = [d for p in ([index_dir] if isinstance(index_dir, (str, Path)) else index_dir) for d in index_dirs(Path(p))]
    trained = None
    if not isinstance(model, DualEncoder):  # the Engine resolves the weights and builds the trained plan
        folder = default_model_folder(dirs[0]) if model is None else Path(model)
        trained = TrainedPlan.read(folder)
        model = load_backbone(folder)
    engine = Engine(dirs, model, plans=aligner_names, trained=trained, w_global=w_global, w_fine=w_fine,
                    limits=limits, media_root=media_root, device=device, check_backbone=check_backbone)
    app = FastAPI(title="tokenflow serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    _add_errors(app)
    _add_routes(app, engine)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes + 64 * 1024)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=allowed_hosts)
    app.middleware("http")(_security_headers)
    return app


async def _security_headers(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _add_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError):  # e.g. an unreadable media file
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)


def _add_routes(app: FastAPI, engine: Engine) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info():
        return engine.info()

    @app.post("/api/search")
    async def search(request: Request):
        body, query = await _read(request, engine)
        plans = _plans(body)
        k = engine.check_k(body.get("k", 10))
        return await run_in_threadpool(engine.search, query, k, plans, body.get("w_global"), body.get("w_fine"))

    @app.post("/api/explain")
    async def explain(request: Request):
        body, query = await _read(request, engine)
        return await run_in_threadpool(engine.explain, query, body.get("item"), body.get("plan"),
                                       body.get("hparams"))

    thumbs: OrderedDict[tuple[Path, int], bytes] = OrderedDict()  # the last THUMBNAILS made
    lock = threading.Lock()

    @app.get("/media/{item:path}")
    def media(item: str):
        path = engine.media_path(item)
        key = (path, path.stat().st_mtime_ns)
        with lock:
            data = thumbs.get(key)
            if data is not None:
                thumbs.move_to_end(key)
        if data is None:
            with engine.busy():  # decoding a video's frame is heavy work, bounded like a query
                data = thumbnail_png(path, max_pixels=engine.limits.max_image_pixels)
            with lock:
                thumbs[key] = data
                while len(thumbs) > THUMBNAILS:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


async def _read(request: Request, engine: Engine) -> tuple[dict, Query]:
    """The request's JSON object and its checked query (a text, or an uploaded image)."""
    ctype = request.headers.get("content-type", "")
    image = None
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=2, max_part_size=64 * 1024)
        try:  # an upload over 1 MB spills to a temporary file: closed here, not at garbage collection
            raw, upload = form.get("request", "{}"), form.get("image")
            if upload is None or isinstance(upload, str):
                raise RequestError("multipart request without an 'image' file", 400)
            data = await upload.read(engine.limits.max_upload_bytes + 1)
            named = {"filename": upload.filename, "content_type": upload.content_type}
        finally:
            await form.close()
        image = await run_in_threadpool(lambda: decode_upload(data, engine.limits.max_upload_bytes,
                                                              engine.limits.max_image_pixels, **named))
    elif ctype.startswith("application/json"):
        raw = await request.body()
    else:
        raise RequestError("send JSON (application/json), or multipart/form-data with an image", 415)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request is not valid JSON ({e})", 400) from None
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object", 400)
    query = engine.check_image(image) if image is not None else engine.check_text(body.get("query"))
    return body, query


def _plans(body: dict) -> list[tuple[str, dict]]:
    """``plans``: names or ``{"name", "hparams"}``; ``hparams``: NAME -> {...} for plans given by name."""
    plans, shared = body.get("plans", ["tokenflow"]), body.get("hparams") or {}
    if isinstance(plans, str):
        plans = [plans]
    if not isinstance(plans, list) or not isinstance(shared, dict):
        raise RequestError("plans must be a list of names (or {name, hparams}); hparams an object NAME: {...}", 400)
    out = []
    for p in plans:
        if isinstance(p, dict):
            out.append((p.get("name"), p.get("hparams") or {}))
        else:
            out.append((p, (shared.get(p) if isinstance(p, str) else None) or {}))
    return out


_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]@/\s]+)(:\d{1,5})?")


def host_name(header: str) -> str | None:
    """The host a Host header names, without its port (``"[::1]:8000"`` -> ``"::1"``,
    ``"LocalHost:80"`` -> ``"localhost"``); None when the header is not a host with an optional
    port (``"[::1]evil"``, ``"a:b"``, ``"a b"``, empty)."""
    m = _HOST.fullmatch(header.lower())
    return None if m is None else m.group(1).strip("[]")


class HostCheck:
    """ASGI middleware: answer only requests with exactly one Host header that names one of
    ``allowed`` (else a JSON 400), so that a page on another site cannot reach the server
    through DNS rebinding. ``"*"`` in ``allowed`` lets every host through."""

    def __init__(self, app: Callable, allowed: Sequence[str]):
        self.app = app
        self.allowed = None if "*" in allowed else {host_name(h) or h for h in allowed}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.allowed is not None and scope["type"] in ("http", "websocket"):
            hosts = [v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"]
            if len(hosts) != 1 or host_name(hosts[0]) not in self.allowed:
                shown = hosts[0] if len(hosts) == 1 else f"{len(hosts)} Host headers"
                response = JSONResponse({"error": f"host {shown!r} is not served here (allowed: "
                                                  f"{', '.join(sorted(self.allowed))})"}, status_code=400)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse a request body larger than ``max_bytes`` (413), by its
    Content-Length or, without one, while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"error": f"request body over {self.max_bytes} bytes"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of ``host`` in a background thread; yields its base
    URL (``http://127.0.0.1:PORT``) and stops the server on exit. For tests and notebooks."""
    uvicorn = require("uvicorn", "serve", "tokenflow serve")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           http=json_errors_protocol()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tokenflow-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    uvicorn = require("uvicorn", "serve", "tokenflow serve")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5, http=json_errors_protocol())


@functools.cache
def json_errors_protocol() -> type:
    """uvicorn's h11 protocol, answering a request that h11 refuses before the app sees it (a
    second Host header, a malformed request line or header) with a JSON 400 ``{"error": ...}``
    naming the problem, where uvicorn answers plain text "Invalid HTTP request received."."""
    require("uvicorn", "serve", "tokenflow serve")
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JSONErrorsH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            problem = sys.exc_info()[1]  # called while handling h11's RemoteProtocolError
            detail = str(problem) if isinstance(problem, h11.RemoteProtocolError) and str(problem) else msg
            if "multiple Host" in detail:
                message = "the request has more than one Host header: send exactly one"
            else:
                message = f"malformed HTTP request ({detail.rstrip('.')})"
            body = json.dumps({"error": message}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JSONErrorsH11Protocol
