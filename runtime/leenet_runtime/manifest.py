"""The export manifest: the one typed, versioned schema of an exported LEENet directory.

``leenet.export`` writes it and :class:`~leenet_runtime.runner.ExitRunner` reads it; both
use the dataclasses below, so the file's layout is defined here and nowhere else.

An export directory holds one ONNX graph per stage and ``manifest.json``::

    {"format": "leenet.export", "version": 1, "leenet_version": "0.1.0", "opset": 17,
     "input_shape": [1, 8, 8], "dtype": "float32",
     "preprocessing": {"image_size": [8, 8], "resize": "stretch", "resize_size": 0,
                       "color": "L", "channels": 1, "value_max": 255.0,
                       "mean": [0.3053], "std": [0.376]},
     "class_names": ["0", ...], "threshold": 0.5, "gate_history": true,
     "backbone_flops": 123456,
     "exits": [{"name": "block1", "cost": 0.41, "enabled": true, "head": true,
                "graph": "stage0.onnx", "inputs": ["x"], "outputs": ["features", "logits", "exit_prob"]}, ...],
     "files": {"stage0.onnx": "<sha256>", ...}}

Fields appear in later versions (:data:`FIELD_VERSIONS`), and a manifest is written as the
oldest version that can describe it (:func:`version_for`), so a runtime reads every export it
can run and refuses, in one line, one that needs a newer runtime:

* version 2 adds ``"linked"`` and ``"final_heads"``, for a network whose exits read the heads
  before them (a cascade or an ensemble, :mod:`leenet.nn.combine`); its graphs also take the
  earlier heads' own logits (``"raw_logits"``) and, with an ensemble, give their head's own
  (``"head_logits"``);
* version 3 adds ``"precision"`` and ``"quantization"``, for int8 stage graphs (onnxruntime
  QDQ static quantization, :mod:`leenet.export.quantize`); they read and give float32 tensors
  like the float32 graphs, so the router runs them unchanged.

A float32 export without linked exits is written as version 1, byte for byte as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

FORMAT = "leenet.export"
# field → the schema version it appeared in; a field absent from the table is in version 1
FIELD_VERSIONS = {"linked": 2, "final_heads": 2, "precision": 3, "quantization": 3}
_MEANS = {"linked": "linked exits", "final_heads": "linked exits", "precision": "int8 graphs",
          "quantization": "int8 graphs"}  # what a field of FIELD_VERSIONS describes, for messages
VERSION = max(FIELD_VERSIONS.values())  # the newest schema
READ_VERSIONS = tuple(range(1, VERSION + 1))
LINKED_VERSION = FIELD_VERSIONS["linked"]  # the first version that can describe linked exits
PRECISIONS = ("float32", "int8")  # what the stage graphs compute in
MANIFEST_NAME = "manifest.json"
RESIZE_MODES = ("stretch", "shorter-side-crop")
COLORS = ("L", "RGB")
# Graph tensor names (an ONNX graph may not reuse an input name for an output).
INPUT, PREV_LOGITS, RAW_LOGITS = "x", "prev_logits", "raw_logits"
FEATURES, LOGITS, EXIT_PROB, HEAD_LOGITS = "features", "logits", "exit_prob", "head_logits"


class ExportError(RuntimeError):
    """An export directory that cannot be used (missing, altered, another version) or a bad input.

    The message is one line that says what is wrong and how to fix it.
    """


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes one network input, exactly as the training images were made."""

    image_size: tuple[int, int]  # (H, W) the network reads
    resize: str  # "stretch": bilinear to image_size, antialiased when shrinking (in-memory datasets);
    # "shorter-side-crop": shorter side to resize_size (PIL bilinear), then a centre crop (folder datasets)
    resize_size: int  # shorter side before the centre crop; 0 with "stretch"
    color: str  # "L" or "RGB": the colour of the training images; files are converted to it
    channels: int  # channels the network reads (grey repeated to 3 when 3 and color "L")
    value_max: float  # value of full brightness in an 8-bit file (255): it maps to 1.0, i.e. to the training
    # images' full scale (16 for scikit-learn digits, whose 0..16 are scaled by 16 in memory)
    mean: tuple[float, ...]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, ...]  # per-channel standard deviation divided by

    @classmethod
    def from_dict(cls, value: dict) -> Preprocessing:
        """Preprocessing from its JSON form (a checkpoint's spec, a manifest's field)."""
        return _convert(cls, value, "preprocessing")

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES or self.color not in COLORS:
            raise ExportError(f"preprocessing resize {self.resize!r} / color {self.color!r} unknown "
                              f"(valid: {', '.join(RESIZE_MODES)} / {', '.join(COLORS)})")
        if not self.value_max > 0:
            raise ExportError(f"preprocessing value_max must be positive, got {self.value_max}")
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise ExportError(f"preprocessing needs {self.channels} mean and positive std values, "
                              f"got mean {self.mean}, std {self.std}")


@dataclass(frozen=True)
class ExitEntry:
    """One exit and the stage graph that ends at it."""

    name: str  # the exit's name (the last is the backbone's own classifier)
    cost: float  # relative FLOPs of leaving here in the routed network (1.0 = the plain backbone)
    enabled: bool  # whether the gate can let samples out here (always true for the final exit)
    head: bool  # whether the graph computes this exit's logits (false: no enabled gate or later exit needs them)
    graph: str  # ONNX file of the stage graph
    inputs: tuple[str, ...]  # graph input names: "x", with gate history "prev_logits" (B, i, K), the earlier
    # exits' logits, and with linked exits "raw_logits" (B, i, K), the earlier heads' own logits
    outputs: tuple[str, ...]  # graph output names, in this order, a subset of ("features", "logits",
    # "exit_prob", "head_logits"); "head_logits" (the head's own logits, before the ensemble) only
    # when they differ from the exit's "logits"; the last graph gives "logits" only


@dataclass(frozen=True)
class Quantization:
    """How an int8 export's stage graphs were made from the float32 ones (version 3)."""

    format: str  # onnxruntime's QuantFormat: "QDQ" (QuantizeLinear/DequantizeLinear pairs around float ops)
    activations: str  # activation type: "uint8" (asymmetric) or "int8"
    weights: str  # weight type and granularity, e.g. "int8 per-channel"
    method: str  # activation range calibration: "minmax", "entropy" or "percentile"
    calibration_images: int  # calibration images that set the activation ranges, stage by stage
    quantized: str  # which nodes are int8: "backbone" (heads and gates float32) or "backbone+heads"
    refit: str  # how the exit policy was refit on the int8 graphs' outputs, e.g. "shared threshold"
    refit_images: int  # calibration images the refit was chosen on
    onnxruntime: str  # the onnxruntime version that quantized the graphs


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs besides the graphs themselves."""

    format: str  # always FORMAT
    version: int  # schema version, VERSION when written
    leenet_version: str  # the LEENet release that exported the graphs
    opset: int  # ONNX opset of the graphs
    input_shape: tuple[int, ...]  # (C, H, W) of one preprocessed image
    dtype: str  # dtype of the input batch ("float32")
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    threshold: float  # a sample leaves at the first enabled exit whose exit_prob >= threshold
    gate_history: bool  # gates read the earlier exits' logits (graph input "prev_logits")
    backbone_flops: int  # FLOPs of the plain backbone for one image (cost * this = exit FLOPs)
    exits: tuple[ExitEntry, ...]
    files: dict[str, str]  # every other file of the directory → its sha256 (hex)
    # version 2 (absent from version 1, which means False):
    linked: bool = False  # an exit's logits read the heads before it (a cascade or an ensemble): the
    # runtime keeps the heads' own logits and feeds them to the graphs that take "raw_logits"
    final_heads: bool = False  # the final exit reads every early head (an ensemble over it)
    # version 3 (absent from earlier versions, which means float32):
    precision: str = "float32"  # what the stage graphs compute in: "float32" or "int8" (inputs and outputs
    # are float32 either way)
    quantization: Quantization | None = None  # how the int8 graphs were made; None for float32

    def __post_init__(self) -> None:
        made = (self.preprocessing.channels, *self.preprocessing.image_size)
        if made != tuple(self.input_shape):
            raise ExportError(f"the manifest's preprocessing makes {made} images but its graphs read "
                              f"input_shape {tuple(self.input_shape)}: export again")
        newer = dict.fromkeys(_MEANS[name] for name in FIELD_VERSIONS
                              if FIELD_VERSIONS[name] > self.version and _is_set(self, name))
        if newer:
            raise ExportError(f"a version {self.version} manifest cannot describe {' or '.join(newer)}: export again")
        if self.precision not in PRECISIONS or (self.precision == "int8") != (self.quantization is not None):
            raise ExportError(f"the manifest's precision {self.precision!r} and its quantization disagree "
                              f"(valid precisions: {', '.join(PRECISIONS)}; int8 needs quantization): export again")
        if self.final_heads and not self.linked:
            raise ExportError("the manifest's final exit reads the heads but its exits are not linked: export again")
        self._check_graphs()

    def _check_graphs(self) -> None:
        """Refuse exits whose graphs do not run, take and give what the routing rule says."""
        early = self.exits[:-1]
        want = needed_heads([e.enabled for e in early], self.gate_history or self.linked, self.final_heads)
        if [e.head for e in early] != want:
            raise ExportError(f"the manifest's exits run heads {[e.head for e in early]} but their gates need "
                              f"{want}: the manifest is damaged; export again")
        for i, entry in enumerate(self.exits):
            last = i == len(self.exits) - 1
            reads_raw = self.linked and i > 0 and (self.final_heads if last else entry.head)
            if (RAW_LOGITS in entry.inputs) != reads_raw:
                raise ExportError(f"the manifest's {entry.graph} {'lacks' if reads_raw else 'has'} input "
                                  f"{RAW_LOGITS!r} for {'linked' if self.linked else 'unlinked'} exits: "
                                  "the manifest is damaged; export again")

    def to_dict(self) -> dict:
        """The JSON form, without the keys of versions after its own."""
        value = dataclasses.asdict(self)
        for key, version in FIELD_VERSIONS.items():
            if version > self.version:
                del value[key]
        return value


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Manifest)}


def _is_set(manifest: Manifest, name: str) -> bool:
    """Whether ``manifest``'s field ``name`` differs from its default (what an older version means by its absence)."""
    return getattr(manifest, name) != _DEFAULTS[name]


def version_for(**fields) -> int:
    """The oldest manifest version that can describe a manifest with these field values: the
    version of :data:`FIELD_VERSIONS` of every field set to other than its default, at least 1."""
    unknown = set(fields) - set(_DEFAULTS)
    if unknown:
        raise ExportError(f"manifest has no fields {', '.join(sorted(unknown))}")
    return max([1, *(FIELD_VERSIONS.get(name, 1) for name, value in fields.items() if value != _DEFAULTS[name])])


def needed_heads(enabled: list[bool], chained: bool, final: bool = False) -> list[bool]:
    """Which early heads a routed network runs, from which gates can fire (``enabled``, E-1 bools).

    The rule of ``leenet.nn.cost.needed_heads``: with ``chained`` exits (gate history, a cascade
    or an ensemble) a head also runs for any enabled gate after it; with ``final`` (the final
    exit reads every early head) every head runs.
    """
    if final:
        return [True] * len(enabled)
    return [any(enabled[i:]) for i in range(len(enabled))] if chained else list(enabled)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(out_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest`` into ``out_dir`` with the sha256 of every other file there (atomically)."""
    out_dir = Path(out_dir)
    files = {p.name: sha256_of(p) for p in sorted(out_dir.iterdir())
             if p.is_file() and p.name != MANIFEST_NAME and not p.name.endswith(".tmp")}
    missing = [e.graph for e in manifest.exits if e.graph not in files]
    if missing:
        raise ExportError(f"{out_dir} lacks the graph files {', '.join(missing)}: export again")
    payload = dataclasses.replace(manifest, files=files).to_dict()
    path = out_dir / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(export_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Load ``export_dir/manifest.json``, check its schema and (``verify``) every file's sha256.

    Raises:
        ExportError: the directory or manifest is missing, of another format or version,
            malformed, or a file it lists is missing or altered.
    """
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST_NAME
    fix = "export the model again with `leenet export RUN_DIR OUT_DIR`"
    if not path.is_file():
        raise ExportError(f"{path} not found: pass a directory written by `leenet export`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not readable JSON ({' '.join(str(exc).split())}): {fix}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ExportError(f"{path} is not a LEENet export manifest (format {FORMAT!r}): {fix}")
    if raw.get("version") not in READ_VERSIONS:
        raise ExportError(f"{path} has manifest version {raw.get('version')!r}, this runtime reads "
                          f"versions {', '.join(map(str, READ_VERSIONS))}: use the matching leenet-runtime or {fix}")
    missing = [key for key, version in FIELD_VERSIONS.items() if raw["version"] >= version and key not in raw]
    if missing:
        raise ExportError(f"manifest lacks {', '.join(missing)}: the manifest is damaged or from another "
                          "release; export again")
    manifest = _convert(Manifest, raw, "manifest")
    if verify:
        verify_files(export_dir, manifest)
    return manifest


def verify_files(export_dir: Path, manifest: Manifest) -> None:
    """Raise :class:`ExportError` if a listed file is missing or its sha256 differs."""
    unlisted = [e.graph for e in manifest.exits if e.graph not in manifest.files]
    if unlisted:
        raise ExportError(f"{export_dir / MANIFEST_NAME} lists no hash for {', '.join(unlisted)}: export again")
    for name, expected in manifest.files.items():
        file = export_dir / name
        if Path(name).name != name or not file.is_file():
            raise ExportError(f"{file} is missing: copy the whole export directory or export again")
        if sha256_of(file) != expected:
            raise ExportError(f"{file} was altered since export (sha256 differs from the manifest's): "
                              "restore the original file or export again")


def _convert(kind, value, where: str):
    """``value`` (parsed JSON) as ``kind`` (a type hint of the schema), or an ExportError naming ``where``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        hints = typing.get_type_hints(kind)
        fields = dataclasses.fields(kind)
        names = [f.name for f in fields if f.name in value or f.default is dataclasses.MISSING]
        missing = [n for n in names if n not in value]
        if missing:
            raise ExportError(f"{where} lacks {', '.join(missing)}: the manifest is damaged or from "
                              "another release; export again")
        return kind(**{n: _convert(hints[n], value[n], f"{where}.{n}") for n in names})
    if origin is tuple:  # a list in JSON, a tuple in a checkpoint's spec
        if not isinstance(value, (list, tuple)):
            raise _bad(where, "a list", value)
        return tuple(_convert(args[0], v, f"{where}[{k}]") for k, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise _bad(where, kind.__name__, value)


def _bad(where: str, want: str, value) -> ExportError:
    return ExportError(f"manifest field {where} should be {want}, got {type(value).__name__}: export again")
