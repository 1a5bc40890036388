"""The HTTP layer in process (FastAPI's TestClient): records like `leenet predict`, the v2 protocol
in JSON and binary, metrics, and a one-line 4xx for each kind of bad request."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from leenet_runtime import ExitRunner
from leenet_runtime.app import ServeConfig, create_app
from leenet_runtime.predict import RECORD_KEYS, predict
from leenet_runtime.protocol import HEADER_LENGTH

from serve_fixtures import assert_same_answers, images, make_export, png_files


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def client(export):
    with TestClient(create_app(ServeConfig(str(export), max_body_bytes=200_000, max_image_pixels=512 * 512))) as c:
        yield c


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_classify_gives_the_records_of_leenet_predict(client, export, tmp_path) -> None:
    files = png_files(tmp_path, 5)
    want = list(predict(ExitRunner(export, threads=1), files, batch_size=1))
    one = client.post("/v1/classify", content=files[0].read_bytes(), headers={"content-type": "image/png",
                                                                               "x-filename": str(files[0])})
    assert one.status_code == 200 and one.json() == [want[0]]
    several = client.post("/v1/classify", files=[("image", (str(f), f.read_bytes(), "image/png")) for f in files])
    assert several.status_code == 200
    got = several.json()
    assert [tuple(r) for r in got] == [RECORD_KEYS] * 5
    for g, w in zip(got, want):
        same = ("file", "class", "exit", "exit_index")
        assert {k: g[k] for k in same} == {k: w[k] for k in same}
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-5)


def test_v2_metadata_health_and_readiness(client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny/ready").status_code == 200
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "exit_index"]
    assert client.get("/v2/models/other").status_code == 404


def test_v2_infer_in_json_and_binary_equals_the_runner(client, export) -> None:
    runner, x = ExitRunner(export, threads=1), images(6, seed=2)
    request = {"id": "7", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                      "data": x.ravel().tolist()}]}
    answer = client.post("/v2/models/tiny/infer", json=request).json()
    assert answer["id"] == "7" and answer["model_name"] == "tiny"
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    assert_same_answers(runner, x, out["logits"].astype(np.float32), out["exit_index"])

    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "exit_index", "parameters": {"binary_data": True}}]}).encode()
    response = client.post("/v2/models/tiny/infer", content=head + x.tobytes(),
                           headers={HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"})
    n = int(response.headers[HEADER_LENGTH])
    meta = json.loads(response.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 6 * 8
    np.testing.assert_array_equal(np.frombuffer(response.content[n:], "<i8"), out["exit_index"])


def _error(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert words in message and "\n" not in message


def test_bad_images_are_4xx_and_the_server_keeps_serving(client, export, tmp_path) -> None:
    png = png_files(tmp_path, 1)[0].read_bytes()
    post = lambda body, kind="image/png": client.post("/v1/classify", content=body, headers={"content-type": kind})  # noqa: E731
    _error(post(b"not an image at all"), 422, "not an image format")
    _error(post(png[: len(png) // 2]), 422, "cannot read image")  # truncated
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 million pixels in a few kilobytes
    _error(post(bomb.getvalue()), 422, "more pixels than the limit")
    _error(post(_png(np.zeros((600, 600), np.uint8))), 422, "more than the limit")
    _error(post(b""), 400, "empty")
    _error(post(b"x" * 300_000), 413, "limit")
    _error(post(png, "text/plain"), 415, "image/png")
    _error(client.post("/v1/classify", content=b"--x\r\n", headers={"content-type": "multipart/form-data; boundary=x"}),
           400, "multipart")
    assert post(png).status_code == 200


@pytest.mark.parametrize("change, words", [
    (lambda r: r["inputs"][0].update(shape=[1, 3, 16, 15]), "this model reads [N, 3, 16, 16]"),
    (lambda r: r["inputs"][0].update(datatype="INT32"), "FP32"),
    (lambda r: r["inputs"][0].update(name="x"), "this model reads \"input\""),
    (lambda r: r["inputs"][0].update(data=[0.0] * 10), "needs 768"),
    (lambda r: r["inputs"][0].update(data=[float("nan")] * 768), "NaN"),
    (lambda r: r.update(outputs=[{"name": "probs"}]), "unknown outputs"),
    (lambda r: r.pop("inputs"), "inputs"),
])
def test_bad_v2_requests_are_400(client, change, words) -> None:
    request = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}
    change(request)
    body = json.dumps(request, allow_nan=True).encode()
    _error(client.post("/v2/models/tiny/infer", content=body), 400, words)


def test_malformed_v2_bodies_are_400(client) -> None:
    _error(client.post("/v2/models/tiny/infer", content=b"{nope"), 400, "not JSON")
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 3072}}]}).encode()
    _error(client.post("/v2/models/tiny/infer", content=head + b"\0" * 10, headers={HEADER_LENGTH: str(len(head))}),
           400, "binary input")


def test_metrics_and_status(client, tmp_path) -> None:
    client.post("/v1/classify", content=png_files(tmp_path, 1)[0].read_bytes(), headers={"content-type": "image/png"})
    client.post("/v1/classify", content=b"junk", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    for name in ("leenet_requests_total", "leenet_request_duration_seconds_bucket", "leenet_queue_duration_seconds_bucket",
                 "leenet_stage_executions_total", "leenet_stage_batch_size_bucket", "leenet_exits_total",
                 "leenet_queue_depth", "leenet_audit_agreement"):
        assert name in text, name
    assert 'leenet_requests_total{outcome="client_error",route="/v1/classify"}' in text
    assert 'leenet_requests_total{outcome="success",route="/v1/classify"}' in text
    status = client.get("/v1/status").json()
    assert status["model"] == "tiny" and status["queue_depth"] == [0, 0, 0, 0] and status["audit"]["rate"] == 0.0


def test_an_unexpected_error_is_a_500_and_counted(export, tmp_path, monkeypatch) -> None:
    app = create_app(ServeConfig(str(export)))

    async def broken(batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.scheduler, "classify", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.post("/v1/classify", content=png_files(tmp_path, 1)[0].read_bytes(),
                          headers={"content-type": "image/png"})
        assert response.status_code == 500 and "internal error (RuntimeError)" in response.json()["error"]
        assert 'leenet_requests_total{outcome="server_error",route="/v1/classify"} 1.0' in c.get("/metrics").text
        assert c.get("/v2/health/live").status_code == 200
