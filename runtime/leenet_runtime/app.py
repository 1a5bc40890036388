"""The HTTP layer of ``leenet-runtime serve``: routes, errors and health over a :class:`Scheduler`.

FastAPI on uvicorn with prometheus_client, the stack KServe's own Python model server uses, so
the server runs where those run (several worker processes, behind any ASGI-aware proxy, as a
Ray Serve deployment). Routes:

* ``POST /v1/classify``: one image as the raw body (``Content-Type: image/png``, ``image/jpeg``,
  any image type Pillow reads) or several as ``multipart/form-data``; answers a JSON list of
  records with the keys of ``leenet predict --json``, the images preprocessed as it does.
* The Open Inference Protocol (KServe v2, :mod:`leenet_runtime.protocol`): ``GET /v2``,
  ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``, ``/v2/models/{name}/ready``,
  ``POST /v2/models/{name}/infer``.
* ``GET /metrics`` (Prometheus text, :mod:`leenet_runtime.metrics`) and ``GET /v1/status`` (JSON:
  queues and the audit's agreement).

Errors are mapped to status codes in one place (:func:`_error_response`): a bad request is a
4xx JSON ``{"error": "..."}`` naming the problem, a full queue 503 with ``Retry-After``,
anything else 500 with the traceback in the server's log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.formparsers import MultiPartParser

from leenet_runtime import __version__
from leenet_runtime.manifest import ExportError
from leenet_runtime.metrics import CONTENT_TYPE, Metrics
from leenet_runtime.predict import make_records
from leenet_runtime.preprocess import open_image, preprocess_image
from leenet_runtime.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    error_body,
    infer_response,
    model_metadata,
    parse_infer_request,
)
from leenet_runtime.runner import ExitRunner
from leenet_runtime.scheduler import BatchingConfig, Overloaded, Scheduler

log = logging.getLogger("leenet_runtime.serve")
CONFIG_ENV = "LEENET_SERVE_CONFIG"  # JSON ServeConfig for worker processes (uvicorn --workers)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``leenet-runtime serve`` is told; JSON-able, so worker processes rebuild the app."""

    export_dir: str  # a directory written by `leenet export`
    model_name: str = ""  # the v2 model name (default: the export directory's name)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    threads: int | None = 1  # onnxruntime threads for the stage sessions (they run one at a time)
    providers: tuple[str, ...] | None = None  # onnxruntime providers (default: CUDA if available, then CPU)
    max_body_bytes: int = 16 << 20  # larger request bodies are refused (413)
    max_image_pixels: int = 4096 * 4096  # larger images are refused before decoding (a decompression bomb)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_image_pixels < 1:
            raise ExportError("max body bytes and max image pixels must be at least 1")

    @property
    def name(self) -> str:
        return self.model_name or os.path.basename(os.path.normpath(self.export_dir))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        value = json.loads(text)
        value["batching"] = BatchingConfig(**value["batching"])
        value["providers"] = tuple(value["providers"]) if value["providers"] else None
        return cls(**value)


def create_app(config: ServeConfig, runner: ExitRunner | None = None) -> FastAPI:
    """The ASGI app serving ``config.export_dir`` (or an already loaded ``runner``).

    The scheduler starts with the app (its lifespan) and, when the app stops, answers every
    request it has taken before the process exits (uvicorn stops on SIGTERM the same way).
    """
    runner = runner or ExitRunner(config.export_dir, providers=config.providers, threads=config.threads,
                                  spin=False)
    metrics = Metrics(runner.exit_names)
    scheduler = Scheduler(runner, config.batching, metrics)
    name = config.name

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        log.info("serving %s (%s) with %s batching", name, config.export_dir, config.batching.mode)
        yield
        scheduler.stop()

    app = FastAPI(title="LEENet", summary="An early-exit classifier", lifespan=lifespan)
    app.state.scheduler, app.state.metrics, app.state.config = scheduler, metrics, config
    _add_error_handling(app, metrics)
    _add_v1(app, runner, scheduler, config)
    _add_v2(app, runner, scheduler, name)
    _add_ops(app, runner, scheduler, metrics, name)
    return app


def app_from_env() -> FastAPI:
    """The app of the :class:`ServeConfig` in ``$LEENET_SERVE_CONFIG`` (for ``uvicorn --factory`` workers)."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def _add_error_handling(app: FastAPI, metrics: Metrics) -> None:
    for exc_type in (ProtocolError, ExportError, Overloaded, Exception):  # Exception: the 500 handler
        app.add_exception_handler(exc_type, lambda request, exc: _error_response(exc))
    app.add_middleware(_CountRequests, metrics=metrics)


class _CountRequests:
    """Count every POST by route and outcome, and time it (a plain ASGI middleware: FastAPI's
    ``@app.middleware("http")`` costs a task and a stream per request)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            outcome = ("success" if status < 400 else "rejected" if status == 503
                       else "client_error" if status < 500 else "server_error")
            self.metrics.count_request(route.path if route is not None else scope["path"], outcome,
                                       time.perf_counter() - start)


def _error_response(exc: BaseException) -> Response:
    """The one place errors become status codes."""
    if isinstance(exc, ProtocolError):
        return JSONResponse(error_body(str(exc)), status_code=exc.status)
    if isinstance(exc, ExportError):  # a bad image or batch
        return JSONResponse(error_body(str(exc)), status_code=422)
    if isinstance(exc, Overloaded):
        return JSONResponse(error_body(str(exc)), status_code=503, headers={"Retry-After": str(exc.retry_after_s)})
    log.error("internal error", exc_info=exc)
    return JSONResponse(error_body(f"internal error ({type(exc).__name__}): see the server's log"), status_code=500)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) beyond ``limit`` bytes without reading the rest, or when empty (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"the body is {declared} bytes, more than the limit of {limit}: send less", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"the body is more than the limit of {limit} bytes: send less", 413)
        chunks.append(chunk)
    if not size:
        raise ProtocolError("the body is empty: send an image (or a v2 request)")
    return b"".join(chunks)


def _add_v1(app: FastAPI, runner: ExitRunner, scheduler: Scheduler, config: ServeConfig) -> None:
    prep = runner.manifest.preprocessing

    def decode(data: bytes, name: str) -> np.ndarray:
        with open_image(_Named(data, name), max_pixels=config.max_image_pixels) as img:
            return preprocess_image(img, prep)

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        body = await _body(request, config.max_body_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            files = await _form_files(request, body)
        elif kind.startswith("image/") or kind == "application/octet-stream":
            files = [(request.headers.get("x-filename", "image"), body)]
        else:
            raise ProtocolError(f"Content-Type {kind or 'missing'}: send image/png or image/jpeg, or "
                                "multipart/form-data with one image per part", 415)
        names = [n for n, _ in files]
        batch = np.stack([decode(data, n) for n, data in files])
        answer = await scheduler.classify(batch)
        if answer.error is not None:
            raise answer.error
        return JSONResponse(make_records(names, answer.logits, answer.exit_index, class_names=runner.class_names,
                                         exit_names=runner.exit_names, costs=runner.costs.tolist()))


async def _form_files(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    """The file parts of a multipart body (already read, so parsed from ``body``)."""

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream()).parse()
    except Exception as exc:  # the multipart parser's own errors
        raise ProtocolError(f"the multipart body cannot be parsed ({' '.join(str(exc).split())})") from None
    files = [(part.filename or key, await part.read()) for key, part in form.multi_items() if hasattr(part, "read")]
    if not files:
        raise ProtocolError("the multipart body holds no file: send each image as a file part")
    return files


class _Named(io.BytesIO):
    """An in-memory file with a name, for error messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def _add_v2(app: FastAPI, runner: ExitRunner, scheduler: Scheduler, name: str) -> None:
    metadata = model_metadata(name, runner.input_shape, len(runner.class_names))

    def model(model_name: str) -> None:
        if model_name != name:
            raise ProtocolError(f"no model {model_name!r} here: this server serves {name!r}", 404)

    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "leenet", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return _readiness(scheduler)

    @app.get("/v2/models/{model_name}")
    async def model_metadata_route(model_name: str) -> dict:
        model(model_name)
        return metadata

    @app.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str) -> Response:
        model(model_name)
        return _readiness(scheduler)

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        model(model_name)
        body = await _body(request, app.state.config.max_body_bytes)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), runner.input_shape)
        answer = await scheduler.classify(parsed.batch)
        if answer.error is not None:
            raise answer.error
        content, header = infer_response(name, parsed, answer.logits, answer.exit_index)
        if header is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})


def _readiness(scheduler: Scheduler) -> Response:
    ok = scheduler.running
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _add_ops(app: FastAPI, runner: ExitRunner, scheduler: Scheduler, metrics: Metrics, name: str) -> None:
    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/status")
    async def status() -> dict:
        return {"model": name, "exits": runner.exit_names, "costs": runner.costs.tolist(),
                "batching": asdict(scheduler.config), **scheduler.status()}

