"""grunet serve: the JSON API through a real HTTP client against the running server, `grunet explain --json`
as the same structure, the refusals (400 / 404 / 411 / 413, one line each), and the page in headless
Chromium: a stroke drawn with pointer events, the prediction, the heat strips and the probabilities."""
from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import threading

import numpy as np
import pytest
import torch

from grunet.cli import main
from grunet.data import load_split
from grunet.serve import MAX_BODY, TraceService, make_server

TRAIN = ["--steps", "60", "--eval-every", "30", "--units", "12", "--threads", "1", "--progress", "lines"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(["train", "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def stacked_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "stacked"
    assert main(["train", "--out", str(out), *TRAIN, "--layers", "2", "--bidirectional", "--reset-after"]) == 0
    return out


def start(path):
    server = make_server(TraceService.load(str(path)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(run_dir):
    server = start(run_dir)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def trace(port, payload, query=""):
    status, kind, body = request(port, "POST", "/api/trace" + query, json.dumps(payload),
                                 {"Content-Type": "application/json"})
    return status, json.loads(body)


def test_page_and_model_description(server):
    status, kind, page = request(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html")
    assert b'id="draw"' in page and b"http://" not in page and b"https://" not in page  # nothing from elsewhere
    status, _, body = request(server, "GET", "/api/model")
    model = json.loads(body)
    assert status == 200 and model["layers"] == [{"layer": 0, "bidirectional": False}]
    assert model["steps"] == 28 and model["view"] == "rows" and "share of the old state" in model["convention"]


def test_trace_is_explain_json_of_the_same_digit(server, run_dir, capsys):
    status, _, body = request(server, "GET", "/api/digits")
    digits = json.loads(body)["digits"]
    assert [d["label"] for d in digits] == list(range(10))
    images, labels = load_split("mnist-sample", "test")
    d = digits[7]
    assert int(labels[d["index"]]) == 7 and np.array_equal(images[d["index"]], np.array(d["pixels"]))
    status, answer = trace(server, {"pixels": d["pixels"]})
    assert status == 200
    capsys.readouterr()
    assert main(["explain", str(run_dir), "--index", str(d["index"]), "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert answer.pop("pixels") == d["pixels"]
    assert answer == explained  # one source of truth
    assert len(answer["steps"]) == 28 and len(answer["steps"][0]["z"]) == 12
    assert abs(sum(answer["probabilities"]) - 1) < 1e-5
    assert answer["prediction"] == int(np.argmax(answer["steps"][-1]["probabilities"]))


def test_png_body_is_prepared_like_grunet_predict(server):
    from PIL import Image

    images, _ = load_split("mnist-sample", "test")
    canvas = np.zeros((200, 160), dtype=np.uint8)  # a larger, off-centre picture of the digit, dark on light
    canvas[30:142, 20:132] = np.kron(images[3], np.ones((4, 4), dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(255 - canvas).save(buffer, format="PNG")
    status, _, body = request(server, "POST", "/api/trace", buffer.getvalue(), {"Content-Type": "image/png"})
    answer = json.loads(body)
    assert status == 200 and len(answer["steps"]) == 28
    read = np.array(answer["pixels"])
    assert read.shape == (28, 28) and read.max() == 255 and read[:4].max() == 0  # centred in the 20x20 box
    shifted = np.roll(images[3], (5, -4), axis=(0, 1))  # a drawing off-centre: prepare centres it again
    status, drawn = trace(server, {"pixels": shifted.tolist(), "prepare": True})
    def centre(a):
        a = np.asarray(a, dtype=np.float64)
        rows, cols = np.indices(a.shape)
        return np.array([(rows * a).sum(), (cols * a).sum()]) / a.sum()

    assert status == 200 and np.abs(centre(drawn["pixels"]) - centre(images[3])).max() < 1.0
    assert np.abs(centre(shifted) - centre(images[3])).max() > 3.5


@pytest.mark.parametrize("payload,headers,status,message", [
    (b"{bad", {"Content-Type": "application/json"}, 400, "body: expected JSON"),
    (b"[1, 2]", {"Content-Type": "application/json"}, 400, 'body: expected a JSON object with "pixels"'),
    (json.dumps({"pixels": [[0] * 28] * 27}).encode(), {"Content-Type": "application/json"}, 400,
     "pixels: expected 28 rows of 28 numbers in 0..255"),
    (json.dumps({"pixels": [[300] * 28] * 28}).encode(), {"Content-Type": "application/json"}, 400,
     "pixels: expected 28 rows of 28 numbers in 0..255"),
    (b'{"pixels": [[NaN]]}', {"Content-Type": "application/json"}, 400, "pixels: expected 28 rows"),
    (json.dumps({"pixels": [[0] * 28] * 28, "prepare": True}).encode(), {"Content-Type": "application/json"}, 400,
     "pixels: expected a digit"),
    (b"\x89PNG\r\n\x1a\nbroken", {"Content-Type": "image/png"}, 400, "body: expected a PNG or JPEG image"),
    (b"[" * 200_000 + b"]" * 200_000, {"Content-Type": "application/json"}, 400, "body: expected JSON of a few levels"),
    (b"x", {"Content-Type": "text/plain"}, 400, "Content-Type: expected application/json"),
])
def test_malformed_bodies_get_400_with_one_line(server, payload, headers, status, message):
    got, kind, body = request(server, "POST", "/api/trace", payload, headers)
    error = json.loads(body)["error"]
    assert got == status and kind == "application/json" and error.startswith(message) and "\n" not in error


def test_bad_query_unknown_path_missing_length_and_oversized_body(server):
    zeros = {"pixels": [[0] * 28] * 28}
    assert trace(server, zeros, "?direction=reverse")[0] == 400
    status, answer = trace(server, zeros, "?layer=x")
    assert status == 400 and answer["error"] == "layer: expected an integer, got 'x'"
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "POST", "/api/other", b"{}", {"Content-Type": "application/json"})[0] == 404
    with socket.create_connection(("127.0.0.1", server), timeout=30) as s:  # no Content-Length at all
        s.sendall(b"POST /api/trace HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
        assert s.recv(200).split(b"\r\n")[0].endswith(b"411 Length Required")
    with socket.create_connection(("127.0.0.1", server), timeout=30) as s:  # refused before the body is read
        s.sendall(b"POST /api/trace HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: "
                  + str(MAX_BODY + 1).encode() + b"\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # the server answers and closes: read until then (headers and body
            reply += chunk            # may arrive apart)
        assert reply.split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")
        assert b"body: expected at most 4,194,304 bytes, got 4,194,305" in reply


def test_stacked_bidirectional_model_picks_layer_and_direction(stacked_dir):
    server = start(stacked_dir)
    try:
        port = server.server_address[1]
        model = json.loads(request(port, "GET", "/api/model")[2])
        assert model["layers"] == [{"layer": 0, "bidirectional": True}, {"layer": 1, "bidirectional": True}]
        zeros = {"pixels": (np.eye(28) * 255).astype(int).tolist()}
        forward, reverse = trace(port, zeros, "?layer=0&direction=forward")[1], trace(port, zeros, "?layer=0&direction=reverse")[1]
        assert forward["layer"] == reverse["layer"] == 0 and reverse["direction"] == "reverse"
        assert forward["steps"][0]["z"] != reverse["steps"][0]["z"]
        assert forward["prediction"] == reverse["prediction"]  # the model's output does not depend on the view
        assert trace(port, zeros, "?layer=5")[0] == 400
    finally:
        server.shutdown()
        server.server_close()


def test_serve_cli_refuses_a_busy_port_and_a_bad_checkpoint_in_one_line(run_dir, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(run_dir), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host/--port: expected an address this machine can listen on" in err[0]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["serve", str(tmp_path / "bad.pt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["serve", str(run_dir), "--port", "70000"]) == 2


def chromium_driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_page_in_chromium_draws_reads_and_shows(server, tmp_path):
    pytest.importorskip("selenium")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium_driver()
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{server}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "model-info").text.startswith("1 GRU layer"))
        canvas = browser.find_element(By.ID, "draw")
        # a "7": a bar across the top and a stroke down to the lower left (offsets from the canvas centre)
        actions = ActionChains(browser)
        actions.move_to_element_with_offset(canvas, -80, -90).click_and_hold()
        for dx, dy in [(40, 0), (40, 0), (40, 0), (-20, 45), (-20, 45), (-20, 45), (-20, 45)]:
            actions.move_by_offset(dx, dy)
        actions.release().perform()
        wait.until(lambda b: b.find_element(By.ID, "prediction").text.startswith("Prediction:"))
        distinct = browser.execute_script("""
            const out = {};
            for (const id of ["z-strip", "r-strip", "dh-chart", "draw"]) {
              const c = document.getElementById(id), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              const seen = new Set();
              for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) seen.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]);
              out[id] = seen.size;
            }
            return out;""")
        assert all(n > 3 for n in distinct.values()), distinct  # drawn, not blank
        shown = [float(e.get_attribute("data-p")) for e in browser.find_elements(By.CSS_SELECTOR, "#probs .bar")]
        assert len(shown) == 10 and abs(sum(shown) - 1) < 1e-3
        assert int(browser.find_element(By.ID, "scrub").get_attribute("max")) == 28
        browser.save_screenshot(str(tmp_path / "serve.png"))
        assert (tmp_path / "serve.png").stat().st_size > 10_000
    finally:
        browser.quit()
