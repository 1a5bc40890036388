"""The plain backbone's ONNX graph in LitServe with its dynamic batching: the standard server to beat.

``python benchmarks/litserve_backbone.py BACKBONE.onnx EXPORT_DIR PORT`` serves ``POST /predict``
with a JSON body ``{"png": "<base64 PNG>"}``, preprocessed as the export says, batched up to 64
requests with a 2 ms timeout, one onnxruntime thread. Started by ``serve_load.py``.
"""

from __future__ import annotations

import base64
import io
import sys

import litserve as ls
import numpy as np
import onnxruntime as ort

from leenet_runtime import read_manifest
from leenet_runtime.preprocess import open_image, preprocess_image


class Backbone(ls.LitAPI):
    def __init__(self, graph: str, export: str) -> None:
        super().__init__(max_batch_size=64, batch_timeout=0.002)
        self.graph, self.prep = graph, read_manifest(export).preprocessing

    def setup(self, device) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        return preprocess_image(open_image(io.BytesIO(base64.b64decode(request["png"]))), self.prep)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.session.run(None, {"x": x})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"class_index": int(np.argmax(output))}


if __name__ == "__main__":
    graph, export, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ls.LitServer(Backbone(graph, export), accelerator="cpu", workers_per_device=1).run(port=port, log_level="warning")
