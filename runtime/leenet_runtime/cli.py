"""The ``leenet-runtime`` command: ``predict`` classifies files, ``serve`` starts an HTTP server.

``leenet serve`` (with torch installed) is the same ``serve``: :func:`add_serve_arguments` and
:func:`serve` are shared.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from leenet_runtime.manifest import ExportError
from leenet_runtime.predict import format_record, predict, report_error
from leenet_runtime.runner import ExitRunner
from leenet_runtime.scheduler import MODES, BatchingConfig

SERVE_EPILOG = """examples:
  leenet-runtime serve digits-export                        # http://127.0.0.1:8000, one thread
  curl -s -H 'Content-Type: image/png' --data-binary @digit.png http://127.0.0.1:8000/v1/classify
  curl -s -F a=@one.png -F b=@two.png http://127.0.0.1:8000/v1/classify        # several images
  leenet-runtime serve digits-export --audit-rate 0.05      # watch /v1/status's audit agreement
  leenet-runtime serve digits-export --host 0.0.0.0 --workers 2 --threads 1   # two processes
"""


def add_serve_arguments(cmd: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (``leenet-runtime serve`` and ``leenet serve`` share them)."""
    cmd.add_argument("export_dir", help="directory written by `leenet export` (float32 or --int8)")
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    cmd.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    cmd.add_argument("--model-name", default="", help="the model's name on the v2 routes (default: the export "
                     "directory's name)")
    cmd.add_argument("--batching", choices=MODES, default="stage",
                     help="stage (default): a queue per stage, rows of different requests merged before each stage, so "
                     "deep stages run full batches; request: each batch of requests routed through every stage together")
    cmd.add_argument("--max-batch", type=int, default=64, help="most rows one stage runs at once (default 64)")
    cmd.add_argument("--max-delay-ms", type=float, default=2.0,
                     help="longest rows wait at a deeper stage for more rows while earlier stages have work, like "
                     "Triton's max_queue_delay (default 2 ms; new requests never wait for a batch to fill)")
    cmd.add_argument("--max-queue", type=int, default=1024,
                     help="rows that may wait in all queues; beyond it requests get 503 with Retry-After (default 1024)")
    cmd.add_argument("--threads", type=int, default=1,
                     help="onnxruntime threads shared by the stages, which run one at a time (default 1; at most the "
                     "cores you give each worker)")
    cmd.add_argument("--workers", type=int, default=1,
                     help="server processes, each with its own model and queues (default 1)")
    cmd.add_argument("--ray-replicas", type=int, default=0,
                     help="serve N replicas on Ray Serve (a local Ray instance, its HTTP proxy on --host:--port) "
                     "instead of uvicorn; needs leenet-runtime[ray] (default 0: off)")
    cmd.add_argument("--audit-rate", type=float, default=0.0,
                     help="share of answered images also run to the final exit after answering; /v1/status and "
                     "/metrics give how often the answering exit agreed with it (default 0: off)")
    cmd.add_argument("--audit-window", type=int, default=1000, help="audited images the agreement covers (default 1000)")
    cmd.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    cmd.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                     help="larger images are refused before decoding (default 4096*4096)")
    cmd.add_argument("--providers", default=None,
                     help="comma-separated onnxruntime providers (default: CUDA if available, then CPU)")
    cmd.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def build_parser(prog: str = "leenet-runtime") -> argparse.ArgumentParser:
    """The ``leenet-runtime`` argument parser (``prog`` names the command in messages: ``leenet`` for ``leenet serve``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Run an exported LEENet (no torch).")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("predict", help="classify image files; one line per image")
    cmd.add_argument("export_dir", help="directory written by `leenet export`")
    cmd.add_argument("images", nargs="+", help="image files, or directories of them")
    cmd.add_argument("--batch-size", type=int, default=64, help="images per routed batch (default 64)")
    cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    cmd.add_argument("--value-max", type=float, default=None,
                     help="pixel value of full brightness in the files (default: their bit depth's, 255 for 8-bit)")
    cmd.add_argument("--threads", type=int, default=None,
                     help="CPU threads per graph (default: onnxruntime's, every core; 1 on a shared machine)")
    cmd.add_argument("--providers", default=None,
                     help="comma-separated onnxruntime providers (default: CUDA if available, then CPU)")
    serve_cmd = commands.add_parser("serve", help="serve the export over HTTP (needs leenet-runtime[serve])",
                                    description="Serve an exported LEENet over HTTP: POST /v1/classify with images, "
                                    "the KServe v2 inference protocol under /v2, Prometheus metrics at /metrics.",
                                    epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(serve_cmd)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Start the server of ``args`` (from :func:`add_serve_arguments`); returns when it stops.

    Returns 0 after a clean stop (Ctrl-C, SIGTERM), 2 for a bad export or option.
    """
    try:
        import uvicorn  # the serve extra

        from leenet_runtime.app import CONFIG_ENV, ServeConfig, create_app
    except ImportError as exc:
        print(f"error: serving needs the serve extra ({exc.name} is missing): pip install 'leenet-runtime[serve]'",
              file=sys.stderr)
        return 2
    try:
        config = serve_config(args, ServeConfig)
        runner = ExitRunner(config.export_dir, providers=config.providers, threads=config.threads, spin=False)
        if args.workers < 1 or args.ray_replicas < 0 or (args.ray_replicas and args.workers > 1):
            raise ExportError(f"--workers must be at least 1 and --ray-replicas at least 0, not both (got "
                              f"{args.workers}, {args.ray_replicas})")
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = args.port or _free_port(args.host)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {config.name} ({len(runner.exit_names)} exits, {config.batching.mode} batching) at "
          f"http://{shown}:{port}  (POST /v1/classify, /v2/models/{config.name}/infer; GET /metrics, /v1/status)",
          flush=True)
    if args.ray_replicas:
        return _serve_on_ray(config, args.host, port, args.ray_replicas)
    if args.workers == 1:
        uvicorn.run(create_app(config, runner), host=args.host, port=port, log_level=args.log_level)
    else:
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run("leenet_runtime.app:app_from_env", factory=True, host=args.host, port=port,
                    workers=args.workers, log_level=args.log_level)
    return 0


def _serve_on_ray(config, host: str, port: int, replicas: int) -> int:
    """``replicas`` copies of the app on a local Ray Serve, until SIGINT or SIGTERM."""
    try:
        import ray
        from ray import serve as ray_serve

        from leenet_runtime.ray_serve import application
    except ImportError as exc:
        print(f"error: --ray-replicas needs the ray extra ({exc.name} is missing): pip install 'leenet-runtime[ray]'",
              file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(include_dashboard=False, log_to_driver=False, **({"_node_ip_address": host} if host in
                                                              ("127.0.0.1", "localhost") else {}))
    try:
        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(application(config, replicas=replicas, cpus_per_replica=float(config.threads or 1)),
                      route_prefix="/")
        deadline = time.monotonic() + 300
        while _ray_running(ray_serve) < replicas and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.5)
        print(f"{_ray_running(ray_serve)} of {replicas} Ray Serve replicas running", flush=True)
        stop.wait()
    finally:
        ray_serve.shutdown()
        ray.shutdown()
    return 0


def _ray_running(ray_serve) -> int:
    """Replicas of the LEENet deployment that are running."""
    app = ray_serve.status().applications.get("default")
    return 0 if app is None else app.deployments["leenet"].replica_states.get("RUNNING", 0)


def serve_config(args: argparse.Namespace, kind):
    """The ServeConfig (``kind``) of parsed serve arguments; raises ExportError for a bad value."""
    batching = BatchingConfig(mode=args.batching, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                              max_queue=args.max_queue, audit_rate=args.audit_rate, audit_window=args.audit_window)
    if args.threads < 1 or args.max_body_mb <= 0:
        raise ExportError(f"--threads ({args.threads}) and --max-body-mb ({args.max_body_mb}) must be positive")
    return kind(export_dir=args.export_dir, model_name=args.model_name, batching=batching, threads=args.threads,
                providers=tuple(args.providers.split(",")) if args.providers else None,
                max_body_bytes=int(args.max_body_mb * (1 << 20)), max_image_pixels=args.max_image_pixels)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _predict(args: argparse.Namespace) -> int:
    failed: list[str] = []

    def on_error(message: str) -> None:
        failed.append(message)
        report_error(message)

    try:
        providers = args.providers.split(",") if args.providers else None
        runner = ExitRunner(args.export_dir, providers=providers, threads=args.threads)
        for record in predict(runner, args.images, batch_size=args.batch_size, value_max=args.value_max,
                              on_error=on_error):
            print(format_record(record, args.json), flush=False)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None, prog: str = "leenet-runtime") -> int:
    """``leenet-runtime predict EXPORT_DIR IMAGE_OR_DIR...`` or ``leenet-runtime serve EXPORT_DIR``.

    Returns 0; for predict 1 if some files could not be read; 2 for a bad export or argument.
    """
    args = build_parser(prog).parse_args(argv)
    return serve(args) if args.command == "serve" else _predict(args)


if __name__ == "__main__":
    sys.exit(main())
