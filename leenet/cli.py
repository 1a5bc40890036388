"""The `leenet` command: parse, build a config, call one library function, write the artifacts.

Parsing, ``--help``, argument errors and the listings load no torch: this module imports only
the torch-free ones (:mod:`leenet.config`, the dataset and backbone catalogs), and each
command's function imports the library it calls when it runs. To add a command, write
``_add_NAME(sub)``, which adds its parser and ``set_defaults(handler=_NAME)``, and ``_NAME(args,
argv) -> int``, which imports what it needs and returns the exit status; list ``_add_NAME`` in
:data:`COMMANDS`. ``tests/test_cli_imports.py`` checks that parsing stays light. The largest
command, ``run``, has a module of its own: :mod:`leenet.cli_run`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from leenet.catalog import BACKBONE_CARDS, DATASET_INFO
from leenet.cli_run import EPILOG, add_run
from leenet.config import (
    ENGINES,
)
from leenet.errors import LeenetError, brief


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error, pointing at the help instead of
    printing the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")




def _add_listings(sub) -> None:
    sub.add_parser("backbones", help="list the backbones in the registry with their default exits",
                   description="List the registered backbones: what each is, its multiply-adds at its native "
                   "input size, and the exits used when --exits is not given.").set_defaults(handler=_backbones)
    sub.add_parser("datasets", help="list the datasets LEENet can load",
                   description="List the datasets `leenet run --dataset` accepts, with their sizes.",
                   ).set_defaults(handler=_datasets)


def _add_exits(sub) -> None:
    e = sub.add_parser("exits", help="list the valid exit points of a backbone",
                       description="List where a backbone can be cut into stages: the names --exits accepts, one "
                       "per cut, in execution order.")
    e.add_argument("--arch", required=True, help="backbone: registry name, tv:NAME, timm:NAME or module.path:factory")
    e.set_defaults(handler=_exits)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="re-render report.html from a run directory's results.json",
                       description="Redraw report.html and its plots from the results.json of a finished run "
                       "(after an update of LEENet, or when drawing failed during the run).")
    r.add_argument("run_dir", help="the run directory holding results.json (e.g. runs/digits-digits_cnn-...)")
    r.set_defaults(handler=_report)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="export a run's model as one ONNX graph per stage plus manifest.json",
                       description="Write one ONNX graph per stage (features in; features, exit logits and the "
                       "gate's exit probability out; dynamic batch), and manifest.json with the preprocessing, class "
                       "names, exit costs, threshold and a sha256 of every file. Serve it with leenet-runtime "
                       "(numpy + onnxruntime, no torch).")
    x.add_argument("run_dir", help="a run directory holding model.pt")
    x.add_argument("--out", required=True, help="the export directory to write")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    x.add_argument("--int8", action="store_true", help="int8 stage graphs (onnxruntime static quantization, QDQ), "
                   "calibrated on the run's calibration images, the exit threshold refit on them; writes "
                   "quantization.json (int8 against float32); --out must be new")
    x.add_argument("--calib-images", type=int, help="with --int8: calibration images that set the int8 ranges "
                   "(default 1024)")
    x.set_defaults(handler=_export)


def _add_predict(sub) -> None:
    q = sub.add_parser("predict", help="classify image files with a run's model or an export",
                       description="Classify PNG/JPEG files (grey or RGB, any size) with the run's own preprocessing; "
                       "print per image the file, class, confidence, exit and the cost paid. Unreadable files get "
                       "one line each on stderr and the rest still run (exit status 1).")
    q.add_argument("model", help="a run directory (its model.pt; --engine torch) or an export directory (--engine onnx)")
    q.add_argument("images", nargs="+", help="image files or directories of them")
    q.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch (default) or onnx (onnxruntime; does not load torch)")
    q.add_argument("--batch-size", type=int, default=64, help="images routed together (default 64)")
    q.add_argument("--json", action="store_true", help="one JSON object per line: file, class, class_index, "
                   "confidence, exit, exit_index, cost")
    q.add_argument("--value-max", type=float, help="value of full brightness in the files (default: their bit "
                   "depth's, 255 for 8-bit and 65535 for 16-bit, mapped onto the training images' range)")
    q.add_argument("--device", default="cpu", help="where the torch engine runs (default cpu)")
    q.set_defaults(handler=_predict)


def _add_serve(sub) -> None:
    # A listing only: main() hands `leenet serve ...` to leenet_runtime's own parser, so the two
    # commands cannot drift and parsing here loads nothing.
    sub.add_parser("serve", help="serve an export over HTTP, batching built for exits (= leenet-runtime serve; "
                   "see `leenet serve --help`)", add_help=False)


# Each adds one or two subcommands, in the order `leenet --help` lists them, and sets ``handler``
# to the function that carries the command out.
COMMANDS: tuple[Callable[..., None], ...] = (
    add_run, _add_listings, _add_exits, _add_report, _add_export, _add_predict, _add_serve,
)


def build_parser() -> argparse.ArgumentParser:
    """The `leenet` argument parser; each subcommand's namespace carries its function as ``handler``."""
    parser = _Parser(
        prog="leenet", description="LEENet: early-exit networks with a learned exit policy.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser




def _backbones(args: argparse.Namespace, argv: list[str]) -> int:
    for name, card in BACKBONE_CARDS.items():
        print(f"{name:18s} {card.description}\n{'':18s} default exits: {','.join(card.default_exits)}")
    return 0


def _datasets(args: argparse.Namespace, argv: list[str]) -> int:
    for name, info in DATASET_INFO.items():
        print(f"{name:22s} {info.description}")
    return 0


def _exits(args: argparse.Namespace, argv: list[str]) -> int:
    from leenet.backbones import build_backbone, get_backbone_info
    from leenet.nn.split import describe_exit_points

    info = get_backbone_info(args.arch)
    print(f"default: {','.join(info.default_exits)}")
    listing, same = describe_exit_points(build_backbone(args.arch, num_classes=10))
    print(f"valid:   {listing}")
    print("(one name per cut, in execution order; a..b: the numbered modules from a to b"
          + (f"; a block ends where its last child does, so {same[0]} and {same[1]} are the same cut)" if same
             else ")"))
    return 0


def _report(args: argparse.Namespace, argv: list[str]) -> int:
    from leenet.report import read_results, write_report

    run_dir = Path(args.run_dir)
    results = read_results(run_dir / "results.json")  # one-line LeenetError if missing or damaged
    try:
        print(write_report(results, run_dir))
    except (OSError, ValueError) as exc:
        raise LeenetError(f"cannot draw the report of {run_dir} ({brief(exc)}): rerun `leenet run`") from None
    return 0


def _export(args: argparse.Namespace, argv: list[str]) -> int:
    from leenet.export import QuantizeOptions, export_int8, export_onnx

    if args.int8:
        given = {} if args.calib_images is None else {"calib_images": args.calib_images}
        print(export_int8(args.run_dir, args.out, opset=args.opset, options=QuantizeOptions(**given)))
    else:
        print(export_onnx(args.run_dir, args.out, opset=args.opset))
    return 0


def _predict(args: argparse.Namespace, argv: list[str]) -> int:
    """`leenet predict`: one line (or JSON object) per image; 1 when some files could not be read.
    The onnx engine goes through leenet_runtime alone, without torch."""
    from leenet.predict import predict_files
    from leenet_runtime.predict import format_record

    failed = []

    def report(message: str) -> None:
        failed.append(message)
        print(message, file=sys.stderr)

    for record in predict_files(args.model, args.images, engine=args.engine, batch_size=args.batch_size,
                                value_max=args.value_max, device=args.device, on_error=report):
        print(format_record(record, args.json), flush=True)
    return 1 if failed else 0




@contextlib.contextmanager
def _sigterm_unwinds():
    """A SIGTERM (a scheduler's time limit, `kill`) exits like Ctrl-C does, through the run's
    clean-up (no empty run directory left), with the status 128 + 15 a killed process has."""
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `leenet` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from leenet_runtime.cli import main as runtime_main

        return runtime_main(argv, prog="leenet")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _sigterm_unwinds():
            return args.handler(args, argv)
    except LeenetError as exc:
        print(f"error: {brief(exc, limit=None)}", file=sys.stderr)  # one line, whatever a wrapped reason held
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
