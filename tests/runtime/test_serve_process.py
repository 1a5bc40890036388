"""`leenet-runtime serve` as users start it, on this machine's loopback only: tritonclient works
unchanged, concurrent clients mixing good and bad requests all get correct answers and no 5xx with
flat memory, SIGTERM answers everything in flight before exiting, and two worker processes serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from leenet_runtime import ExitRunner
from leenet_runtime.preprocess import load_images

from serve_fixtures import assert_same_answers, images, make_export, png_files

tritonclient_http = pytest.importorskip("tritonclient.http")
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextmanager
def serving(export: Path, *args: str, timeout: float = 60.0):
    """Start the server on a free loopback port; yield (url, process); stop it (SIGTERM) at the end."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "leenet_runtime.cli", "serve", str(export), "--host", HOST,
                                "--port", str(port), "--log-level", "warning", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("serve") / "tiny")


def test_tritonclient_works_unchanged(export) -> None:
    runner, x = ExitRunner(export, threads=1), images(5, seed=11)
    with serving(export) as (url, _):
        client = tritonclient_http.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
        assert client.get_model_metadata("tiny")["outputs"][1]["name"] == "exit_index"
        tensor = tritonclient_http.InferInput("input", list(x.shape), "FP32")
        for binary in (True, False):
            tensor.set_data_from_numpy(x, binary_data=binary)
            outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "exit_index")]
            result = client.infer("tiny", [tensor], outputs=outputs)
            assert_same_answers(runner, x, result.as_numpy("logits"), result.as_numpy("exit_index"))
        result = client.infer("tiny", [tensor])  # no outputs named: every output, binary
        assert result.as_numpy("exit_index").shape == (5,)


def test_concurrent_good_and_bad_requests(export, tmp_path) -> None:
    files = png_files(tmp_path, 8)
    runner = ExitRunner(export, threads=1)
    want = {f.name: runner(images_of([f], runner))[1][0] for f in files}
    bad = [b"", b"garbage", files[0].read_bytes()[:60]]
    failures: list[str] = []

    def client(k: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(30):
                if (i + k) % 3 == 0:
                    r = http.post("/v1/classify", content=bad[i % 3],
                                  headers={"content-type": "image/png"})
                    if not 400 <= r.status_code < 500:
                        failures.append(f"bad request answered {r.status_code}")
                else:
                    f = files[(i + k) % len(files)]
                    r = http.post("/v1/classify", content=f.read_bytes(),
                                  headers={"content-type": "image/png", "x-filename": f.name})
                    if r.status_code != 200 or r.json()[0]["exit_index"] != want[f.name]:
                        failures.append(f"{f.name}: {r.status_code} {r.text[:100]}")

    with serving(export, "--max-delay-ms", "1") as (url, process):
        rounds = []
        for _ in range(3):  # the first round warms up; memory must not grow over the next two
            threads = [threading.Thread(target=client, args=(k, url)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rounds.append(_rss_kib(process.pid))
        metrics = httpx.get(f"{url}/metrics").text
    assert not failures, failures[:5]
    assert rounds[2] - rounds[1] < 8 * 1024, f"server memory grew {rounds} KiB"
    assert 'outcome="server_error"' not in metrics


def images_of(files, runner):
    return load_images(files, runner.manifest.preprocessing)[0]


def test_sigterm_answers_everything_in_flight(export) -> None:
    x = images(200, seed=12)  # 4 requests: 800 rows, within the queue limit
    answers: list[int] = []

    def post(url: str) -> None:
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        answers.append(httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=60).status_code)

    with serving(export, "--max-batch", "4") as (url, process):  # small batches: the requests take a while
        threads = [threading.Thread(target=post, args=(url,)) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/status").json()["requests_in_flight"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    assert answers == [200] * 4


def test_two_worker_processes(export) -> None:
    runner, x = ExitRunner(export, threads=1), images(4, seed=13)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    with serving(export, "--workers", "2") as (url, process):
        for _ in range(10):
            out = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=30).json()["outputs"]
            assert_same_answers(runner, x, np.asarray(out[0]["data"], np.float32).reshape(4, 5),
                                np.asarray(out[1]["data"]))
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) >= 2, "uvicorn should have started two worker processes"


def test_a_bad_export_is_one_line_and_status_2(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "leenet_runtime.cli", "serve", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "manifest.json not found" in done.stderr


def test_two_ray_serve_replicas(export) -> None:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    runner, x = ExitRunner(export, threads=1), images(3, seed=14)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    with serving(export, "--ray-replicas", "2", timeout=240) as (url, process):
        for _ in range(6):
            out = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=60).json()["outputs"]
            assert_same_answers(runner, x, np.asarray(out[0]["data"], np.float32).reshape(3, 5),
                                np.asarray(out[1]["data"]))
        ray.init(address="auto", include_dashboard=False, log_to_driver=False)  # this machine's Ray instance
        try:
            deadline = time.monotonic() + 120
            while True:
                states = serve.status().applications["default"].deployments["leenet"].replica_states
                if states == {"RUNNING": 2} or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            ray.shutdown()
    assert states == {"RUNNING": 2}


def test_leenet_serve_is_leenet_runtime_serve(capsys, tmp_path) -> None:
    from leenet.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: leenet serve") and "--batching" in text and "--audit-rate" in text
    assert main(["serve", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
