"""``quantization.json``: what int8 did to an export, measured through the graphs that run (one typed schema).

Written by :func:`leenet.export.export_int8` into the export directory (hashed by the manifest
like every file there)::

    {"version": 1, "quantization": {...the manifest's...}, "policy": "alpha=0.85 (loss ce, ...)",
     "calibration": {"images": 287, "exits": [...], "float32": {...}, "int8_before_refit": {...},
                     "int8_after_refit": {...}, "float32_refit": {...}, "same_exit": 0.99, ...},
     "test": {...the same for the test split...}, "routed_matches": true, "speed": "..."}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leenet.errors import LeenetError
from leenet.export.refit import PolicyFigures, policy_figures, route
from leenet.files import replace_atomically
from leenet.report.parse import build, plain
from leenet_runtime.manifest import Quantization

REPORT_NAME = "quantization.json"
REPORT_VERSION = 1
SPEED = "not measured at export: benchmarks/int8_speed.py measures it (docs/int8.md)"


@dataclass(frozen=True)
class ExitAgreement:
    """One exit on one split, float32 against int8 (figures None where the export runs no head)."""

    name: str
    float32_accuracy: float | None
    int8_accuracy: float | None
    same_class: float | None  # share of the images whose int8 class at this exit is the float32 one


@dataclass(frozen=True)
class SplitFigures:
    """Every exit and the saved policy on one split, float32 against int8 before and after the refit."""

    images: int
    exits: tuple[ExitAgreement, ...]
    float32: PolicyFigures  # the float32 export at its saved threshold
    int8_before_refit: PolicyFigures  # the int8 graphs at the float32 threshold
    int8_after_refit: PolicyFigures  # the int8 graphs at the refit threshold: what the export does
    float32_refit: PolicyFigures  # control: the same refit on the float32 outputs (what the search alone moves)
    same_exit: float  # share of the images leaving at the same exit, int8 after the refit against float32
    same_exit_and_class: float  # ... at the same exit with the same class
    same_exit_before_refit: float  # ... the same exit, int8 at the float32 threshold


@dataclass(frozen=True)
class QuantReport:
    """The content of ``quantization.json``."""

    version: int  # REPORT_VERSION
    quantization: Quantization  # as in the manifest
    policy: str  # what the refit kept: the saved alpha or budget (SavedPolicy.describe)
    calibration: SplitFigures  # the split the refit chose on
    test: SplitFigures  # every reported figure
    routed_matches: bool  # ExitRunner routing the int8 export on test gave the simulated exits and classes
    speed: str  # where the speed figures are

    def to_dict(self) -> dict:
        return plain(self)

    @classmethod
    def from_dict(cls, raw: object, where: str = REPORT_NAME) -> QuantReport:
        if not isinstance(raw, dict) or raw.get("version") != REPORT_VERSION:
            raise LeenetError(f"{where} is not a version {REPORT_VERSION} int8 report: export again with --int8")
        return build(cls, raw, where)


def split_figures(exit_names: Sequence[str], costs: Sequence[float], labels: np.ndarray,
                  float32: tuple[np.ndarray, np.ndarray], int8: tuple[np.ndarray, np.ndarray],
                  thresholds: tuple[float, float, float]) -> SplitFigures:
    """Figures of one split from every exit's outputs through both exports.

    Args:
        exit_names, costs: (E,) the exits and their routed costs.
        labels: (N,) int64.
        float32, int8: ``(logits (N, E, K), exit_prob (N, E-1))`` of each export (NaN where not run).
        thresholds: the float32 threshold, the int8 refit one, and the refit's on float32 outputs.
    """
    (f_logits, f_prob), (q_logits, q_prob) = float32, int8
    saved, refit, control = thresholds
    f_exits, q_before, q_after = route(f_prob, saved), route(q_prob, saved), route(q_prob, refit)
    rows = np.arange(len(labels))
    same = q_after == f_exits
    classes_agree = q_logits[rows, q_after].argmax(1) == f_logits[rows, f_exits].argmax(1)
    return SplitFigures(
        images=len(labels), exits=tuple(_exit(n, f_logits[:, i], q_logits[:, i], labels) for i, n in enumerate(exit_names)),
        float32=policy_figures(f_logits, f_exits, labels, costs, saved),
        int8_before_refit=policy_figures(q_logits, q_before, labels, costs, saved),
        int8_after_refit=policy_figures(q_logits, q_after, labels, costs, refit),
        float32_refit=policy_figures(f_logits, route(f_prob, control), labels, costs, control),
        same_exit=float(same.mean()), same_exit_and_class=float((same & classes_agree).mean()),
        same_exit_before_refit=float((q_before == f_exits).mean()))


def _exit(name: str, f: np.ndarray, q: np.ndarray, labels: np.ndarray) -> ExitAgreement:
    if np.isnan(f).any():  # no head at this exit in the export
        return ExitAgreement(name, None, None, None)
    f_class, q_class = f.argmax(1), q.argmax(1)
    return ExitAgreement(name, float((f_class == labels).mean()), float((q_class == labels).mean()),
                         float((f_class == q_class).mean()))


def write_report(out_dir: Path, report: QuantReport) -> Path:
    """Write ``report`` as ``out_dir/quantization.json`` (atomically)."""
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    return replace_atomically(out_dir / REPORT_NAME, lambda f: f.write(text.encode("utf-8")))


def read_report(export_dir: str | Path) -> QuantReport:
    """Read an int8 export's ``quantization.json``.

    Raises:
        LeenetError: missing, unreadable, or of another version.
    """
    path = Path(export_dir) / REPORT_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeenetError(f"cannot read {path} ({type(exc).__name__}): pass an export made with --int8") from None
    return QuantReport.from_dict(raw, str(path))
