"""The Open Inference Protocol (KServe v2) and LEENet's classify records, as pure functions.

No HTTP and no model here: bodies in, numpy arrays out, and back. :mod:`leenet_runtime.app`
puts these on routes; :mod:`leenet_runtime.scheduler` runs the arrays.

A v2 inference request is a JSON object, optionally followed by raw tensor bytes (the binary
tensor extension that ``tritonclient`` uses by default; the JSON's length is then the header
``Inference-Header-Content-Length``)::

    {"id": "42", "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32",
                             "data": [...]}],              # or "parameters": {"binary_data_size": N}
     "outputs": [{"name": "logits"}, {"name": "exit_index", "parameters": {"binary_data": true}}]}

The response carries ``logits`` (N, K) FP32 and ``exit_index`` (N,) INT64, as JSON data or as
binary (asked per output, or for all with ``"parameters": {"binary_data_output": true}``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "exit_index")
HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}  # the only two this model reads or gives


class ProtocolError(ValueError):
    """A request the server cannot take (answered 4xx); the message is one line naming the fix.

    Attributes:
        status: the HTTP status to answer with (400, 404, 413, 415, 422).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    """A parsed v2 inference request.

    Attributes:
        id: the request's ``id`` (echoed in the response), or "".
        batch: (N, C, H, W) float32 images, preprocessed.
        outputs: the output names asked for, in order (default both).
        binary: output name → whether to send it as binary data.
    """

    id: str
    batch: np.ndarray
    outputs: tuple[str, ...]
    binary: dict[str, bool]


def model_metadata(name: str, input_shape: Sequence[int], num_classes: int) -> dict:
    """``GET /v2/models/{name}``: the model's inputs and outputs (-1 is any batch size)."""
    return {"name": name, "versions": ["1"], "platform": "leenet_onnx",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *map(int, input_shape)]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, int(num_classes)]},
                        {"name": "exit_index", "datatype": "INT64", "shape": [-1]}]}


def parse_infer_request(body: bytes, header_length: str | None, input_shape: Sequence[int]) -> InferRequest:
    """A v2 request body → :class:`InferRequest`, checked against the model's (C, H, W) ``input_shape``.

    Raises:
        ProtocolError: malformed JSON, a missing or extra input, a wrong datatype, shape or
            element count, binary data of the wrong size, NaN or infinite values, an unknown output.
    """
    head, tail = _split_binary(body, header_length)
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request is not JSON ({exc.msg}): send a v2 inference request") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError('the request needs "inputs": a list with one tensor named "input"')
    if len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        raise ProtocolError(f'send exactly one input tensor, "{INPUT_NAME}", got {len(request["inputs"])}')
    tensor = request["inputs"][0]
    if tensor.get("name") != INPUT_NAME:
        raise ProtocolError(f'the input is named {tensor.get("name")!r}; this model reads "{INPUT_NAME}"')
    if tensor.get("datatype") != "FP32":
        raise ProtocolError(f'input datatype {tensor.get("datatype")!r}: send "FP32" (preprocessed images)')
    shape = tensor.get("shape")
    want = tuple(int(n) for n in input_shape)
    if (not isinstance(shape, list) or len(shape) != len(want) + 1
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
            or tuple(shape[1:]) != want or shape[0] < 1):
        raise ProtocolError(f"input shape {shape}: this model reads [N, {', '.join(map(str, want))}] with N >= 1")
    batch = _tensor_data(tensor, shape, tail)
    if not np.isfinite(batch).all():
        raise ProtocolError("the input holds NaN or infinite values: send finite preprocessed pixels")
    outputs, binary = _requested_outputs(request)
    return InferRequest(str(request.get("id", "")), batch, outputs, binary)


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a body (all JSON without the header)."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a byte count") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    return body[:n], body[n:]


def _tensor_data(tensor: dict, shape: list[int], tail: bytes) -> np.ndarray:
    """The input's values as float32 of ``shape``, from JSON ``data`` or the binary tail."""
    count = int(np.prod(shape))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * 4 or len(tail) != size:
            raise ProtocolError(f"binary input of {len(tail)} bytes (binary_data_size {size}) for shape {shape}: "
                                f"expected {count * 4} bytes of little-endian float32")
        return np.frombuffer(tail, dtype=DATATYPES["FP32"]).astype(np.float32).reshape(shape)
    if tail:
        raise ProtocolError('binary data follows the JSON but the input has no "binary_data_size" parameter')
    if "data" not in tensor:
        raise ProtocolError('the input has no "data" (or binary data): send the pixel values')
    try:
        data = np.asarray(tensor["data"], dtype=np.float32)
    except (TypeError, ValueError):
        raise ProtocolError('the input "data" must be numbers (a flat or nested list)') from None
    if data.size != count:
        raise ProtocolError(f"the input has {data.size} values but shape {shape} needs {count}")
    return data.reshape(shape)


def _requested_outputs(request: dict) -> tuple[tuple[str, ...], dict[str, bool]]:
    """Which outputs to send and which as binary data."""
    all_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return OUTPUT_NAMES, {name: all_binary for name in OUTPUT_NAMES}
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError('"outputs" must be a list of objects with a "name"')
    names = tuple(o.get("name") for o in asked)
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise ProtocolError(f"unknown outputs {unknown}: this model gives {', '.join(OUTPUT_NAMES)}")
    binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", all_binary)) for o in asked}
    return names, binary


def infer_response(model: str, request: InferRequest, logits: np.ndarray,
                   exit_index: np.ndarray) -> tuple[bytes, int | None]:
    """The v2 response body for routed ``logits`` (N, K) and ``exit_index`` (N,), and the JSON
    header's length when binary data follows it (else None)."""
    arrays = {"logits": np.ascontiguousarray(logits, DATATYPES["FP32"]),
              "exit_index": np.ascontiguousarray(exit_index, DATATYPES["INT64"])}
    outputs, blobs = [], []
    for name in request.outputs:
        array = arrays[name]
        entry = {"name": name, "datatype": "FP32" if name == "logits" else "INT64", "shape": list(array.shape)}
        if request.binary[name]:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blobs.append(array.tobytes())
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    head = json.dumps({"model_name": model, "model_version": "1", "id": request.id, "outputs": outputs}).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


def error_body(message: str) -> dict:
    """The JSON of an error answer (v2's ``{"error": ...}``)."""
    return {"error": message}
