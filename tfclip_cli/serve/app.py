"""The FastAPI application of ``tfclip serve``: each route parses, calls one ``Service`` method, renders JSON.

Errors are JSON ``{"error": ..., "hint": ...}``: 400 for input that does not decode, 401 for a missing or wrong
bearer token on a write endpoint, 403 for a server-side path outside ``--allow-dir`` or a write from another
site, 404 for an unknown tracklet or person, 413 over the upload limits, 421 for a host name the server was not
started for (:mod:`~tfclip_cli.serve.guard`). ``GET /people/{id}`` answers a linked person's timeline,
``GET /cameras`` each camera's latest tracklets (the page polls it), ``GET /tracklets/{id}/search`` a search with a
gallery tracklet, ``GET /calibration`` the stored calibration with its DET curve and score histograms (the page
draws them; nothing here draws a figure). The OpenAPI page is at ``/docs``.
"""

from __future__ import annotations

import hmac
import logging
from importlib import resources
from typing import Annotated, Sequence

import uvicorn
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tfclip_cli import __version__
from tfclip_cli.errors import UserError
from tfclip_cli.index import parse_min_score
from tfclip_cli.serve.guard import AllowedHosts, RequestGuard, allowed_hosts, is_loopback
from tfclip_cli.serve.service import NewTracklet, NotFound, ServeConfig, Service
from tfclip_cli.serve.uploads import Forbidden, TooLarge

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may exceed the upload limit by: boundaries and the other form fields."""
LATEST_PER_CAMERA = 8
"""Tracklets per camera ``GET /cameras`` answers unless asked for another number."""


class Unauthorized(UserError):
    """A write without the bearer token the service requires (HTTP 401)."""


STATUS = {TooLarge: 413, Unauthorized: 401, Forbidden: 403, NotFound: 404}


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


def _service(request: Request) -> Service:
    return request.app.state.service


def _writer(request: Request) -> Service:
    """The service, for a write endpoint: checks the bearer token when the service has one."""
    token = request.app.state.token
    given = request.headers.get("authorization", "")
    if token is not None and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("this endpoint needs the header 'Authorization: Bearer <token>' of tfclip serve --token")
    return _service(request)


ServiceDep = Annotated[Service, Depends(_service)]
WriterDep = Annotated[Service, Depends(_writer)]


def _add_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("tfclip_cli.serve").joinpath("page/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health(service: ServiceDep) -> dict:
        return {"status": "ok", "rows": service.gallery().info.live_count}

    @app.get("/stats")
    def stats(service: ServiceDep) -> dict:
        return service.stats()

    @app.post("/query")
    def query(
        service: ServiceDep,
        file: Annotated[UploadFile, File(description="A video, or a zip/tar archive of frame images.")],
        top_k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[str, Query(description="A number, 'auto' (calibrated) or 'off'.")] = "off",
        cameras: Annotated[str | None, Query(description="Only these camids, comma-separated.")] = None,
    ) -> dict:
        return service.query(file.file, top_k=top_k, min_score=parse_min_score(min_score), camids=_camids(cameras))

    @app.post("/gallery")
    def add(
        service: WriterDep,
        file: Annotated[UploadFile | None, File(description="A video or an archive of frames.")] = None,
        path: Annotated[str | None, Form(description="Or a server-side path under --allow-dir.")] = None,
        tracklet_id: Annotated[str | None, Form()] = None,
        pid: Annotated[int, Form()] = -1,
        camid: Annotated[int, Form()] = -1,
        start_s: Annotated[float | None, Form()] = None,
        end_s: Annotated[float | None, Form()] = None,
    ) -> dict:
        metadata = NewTracklet(tracklet_id=tracklet_id, pid=pid, camid=camid, start_s=start_s, end_s=end_s)
        return service.add(metadata, upload=None if file is None else file.file, path=path)

    @app.delete("/gallery/{tracklet_id:path}")
    def remove(service: WriterDep, tracklet_id: str) -> dict:
        return service.remove(tracklet_id)

    @app.get("/people/{person_id}")
    def person(service: ServiceDep, person_id: int) -> dict:
        return service.person(person_id)

    @app.get("/calibration")
    def calibration(service: ServiceDep) -> dict:
        return service.calibration()

    @app.get("/cameras")
    def cameras(service: ServiceDep, latest: Annotated[int, Query(ge=1, le=100)] = LATEST_PER_CAMERA) -> dict:
        return service.cameras(latest)

    @app.get("/tracklets/{tracklet_id:path}/search")
    def search_tracklet(
        service: ServiceDep,
        tracklet_id: str,
        top_k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[str, Query(description="A number, 'auto' (calibrated) or 'off'.")] = "off",
        cameras: Annotated[str | None, Query(description="Only these camids, comma-separated.")] = None,
    ) -> dict:
        return service.search_tracklet(tracklet_id, top_k=top_k, min_score=parse_min_score(min_score),
                                       camids=_camids(cameras))

    @app.get("/tracklets/{tracklet_id:path}/crop")
    def key_crop(service: ServiceDep, tracklet_id: str) -> Response:
        return Response(service.key_crop(tracklet_id), media_type="image/jpeg")

    @app.get("/tracklets/{tracklet_id:path}/frames/{number}")
    def key_frame(service: ServiceDep, tracklet_id: str, number: int) -> Response:
        return Response(service.key_frame(tracklet_id, number), media_type="image/jpeg")


def _camids(cameras: str | None) -> set[int] | None:
    return None if cameras is None else {_camid(text) for text in cameras.split(",") if text.strip()}


def _camid(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"cameras: {text!r} is not a camid; expected integers like 0,2") from None


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
        return _error(status, error.message, error.hint)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return _error(400, f"bad request: {problems}")


def create_app(service: Service, *, token: str | None, hosts: AllowedHosts) -> FastAPI:
    """The application over a loaded ``service``; ``token`` (if any) guards the write endpoints, and only requests
    naming one of ``hosts`` are answered (:class:`~tfclip_cli.serve.guard.RequestGuard`)."""
    app = FastAPI(title="tfclip serve", version=__version__, description="Search a TF-CLIP person gallery.")
    app.state.service, app.state.token = service, token
    _add_routes(app)
    _add_handlers(app)
    app.add_middleware(RequestGuard, hosts=hosts, max_body=service.config.limits.max_bytes + MULTIPART_SLACK)
    return app


def serve(config: ServeConfig, *, host: str, port: int, token: str | None, allow_hosts: Sequence[str] = ()) -> None:
    """Load the model and gallery once, then answer HTTP on ``host:port`` until interrupted.

    Args:
        allow_hosts: more names the server answers to (a reverse proxy's), beside ``host`` and, for a loopback
            ``host``, localhost (see :func:`~tfclip_cli.serve.guard.allowed_hosts`).
    Raises:
        UserError: when ``host`` is not loopback and no token guards the write endpoints, or as ``Service``.
    """
    if token is None and not is_loopback(host):
        raise UserError(
            f"--host {host} exposes the gallery's write endpoints beyond this machine without a token",
            hint="pass --token SECRET (or set TFCLIP_SERVE_TOKEN), or serve on 127.0.0.1",
        )
    hosts = allowed_hosts(host, allow_hosts)
    service = Service(config)
    app = create_app(service, token=token, hosts=hosts)
    log.info("answering requests for %s", hosts.describe())
    service.start_ingest()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        service.stop_ingest()
