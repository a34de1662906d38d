"""`tfclip serve`: the HTTP API through FastAPI's TestClient, one real uvicorn server on a loopback port
(restart-and-reload), and the web page driven in headless Chromium over its DevTools pipe."""

import asyncio
import importlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import uvicorn
from PIL import Image
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fake_footage import write_video, yolo_model
from gallery_copy import copy_gallery
from test_index import _clustered, _embeddings, tiny_gallery  # noqa: F401  (tiny_gallery: a module fixture)
from tfclip_cli import index
from tfclip_cli.cli import app as cli_app
from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.serve.app import MULTIPART_SLACK, create_app, serve
from tfclip_cli.serve.guard import allowed_hosts
from tfclip_cli.serve.service import ServeConfig, Service, latest_rows
from tfclip_cli.serve.uploads import UploadLimits
from tfclip_cli.tables import Embeddings, read_embeddings

LIMITS = UploadLimits(max_bytes=2_000_000, max_frames=100)


def _config(gallery: Path, tmp_path: Path, **changes) -> ServeConfig:
    values = dict(gallery=gallery, checkpoint=None, device=torch.device("cpu"), limits=LIMITS, allow_dirs=(),
                  store=tmp_path / "store", detector="hog")  # hog finds nobody in 64×32 frames: every clip a crop
    return ServeConfig(**{**values, **changes})


@pytest.fixture()
def gallery_copy(tiny_gallery, tmp_path):  # noqa: F811
    """A private copy of the tiny gallery (the service writes to it) and the gallery's sources."""
    path, _, sources = tiny_gallery
    return copy_gallery(path, tmp_path / "g.faiss"), sources


LOOPBACK = allowed_hosts("127.0.0.1")
BASE_URL = "http://127.0.0.1:8000"  # what a browser on the page of `tfclip serve` sends as Host and Origin


def _client(gallery: Path, tmp_path: Path, *, token: str | None = None, hosts=LOOPBACK, **changes) -> TestClient:
    app = create_app(Service(_config(gallery, tmp_path, **changes)), token=token, hosts=hosts)
    return TestClient(app, base_url=BASE_URL)


def _video(sources: list[str]) -> Path:
    return Path(next(s for s in sources if s.endswith(".mp4")))


def _frame_folder(sources: list[str]) -> Path:
    return Path(next(s for s in sources if Path(s).is_dir()))


def _zip_of(folder: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for frame in sorted(folder.iterdir()):
            archive.write(frame, f"clip/{frame.name}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_query_answers_ranked_hits_with_key_frames_and_a_calibrated_verdict(gallery_copy, tmp_path):
    path, sources = gallery_copy
    video = _video(sources)
    client = _client(path, tmp_path)
    answer = client.post("/query", files={"file": ("q.mp4", video.read_bytes())}, params={"top_k": 3}).json()
    assert [h["rank"] for h in answer["hits"]] == [1, 2, 3] and answer["hits"][0]["tracklet_id"] == str(video)
    assert answer["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4) and answer["hits"][0]["source"] == str(video)
    assert {"pid", "camid", "start_s", "end_s", "match"} <= set(answer["hits"][0])
    assert answer["threshold"] is None and answer["match"] is None and answer["hits"][0]["match"] is None
    assert len(answer["key_frames"]) == 3 and answer["key_frames"][0].startswith("data:image/jpeg;base64,")
    index.store.update_header(path, calibration={"threshold": 0.999, "fmr": 0.01})  # the service reloads it
    answer = client.post("/query", files={"file": ("q.mp4", video.read_bytes())}).json()
    assert answer["threshold"] == 0.999 and answer["match"] is True
    assert [h["match"] for h in answer["hits"]][:2] == [True, False]
    answer = client.post("/query", files={"file": ("q.mp4", video.read_bytes())}, params={"min_score": "1.5"}).json()
    assert answer["hits"] == [] and answer["match"] is False
    for cameras, count in (("-1", 3), ("0,1", 0)):  # the gallery was extracted from paths: camid -1 (unknown)
        answer = client.post("/query", files={"file": ("q.mp4", video.read_bytes())},
                             params={"cameras": cameras, "top_k": 3}).json()
        assert len(answer["hits"]) == count


def test_an_archive_of_frames_is_a_query_and_its_member_names_cannot_escape(gallery_copy, tmp_path):
    path, sources = gallery_copy
    folder = _frame_folder(sources)
    client = _client(path, tmp_path)
    archive = _zip_of(folder, extra={"../../escaped.txt": b"x", "notes.txt": b"not a frame"})
    answer = client.post("/query", files={"file": ("q.zip", archive)}).json()
    assert answer["hits"][0]["tracklet_id"] == str(folder) and answer["num_frames"] == len(list(folder.iterdir()))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for frame in sorted(folder.iterdir()):
            tar.add(frame, arcname=f"../../{frame.name}")
    answer = client.post("/query", files={"file": ("q.tar", buffer.getvalue())}).json()
    assert answer["hits"][0]["tracklet_id"] == str(folder)
    assert not list(tmp_path.parent.glob("escaped.txt")) and not list(tmp_path.parent.glob("*.jpg"))


def _zip_without_frames() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "no frames here")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, data, status, message",
    [
        ("junk.mp4", b"\x00" * 4000, 400, "cannot open the video"),
        ("empty.zip", _zip_without_frames(), 400, "holds no frame images"),
        ("big.mp4", b"\x00" * (LIMITS.max_bytes + 100_000), 413, "at most"),
    ],
)
def test_bad_and_oversized_uploads_answer_400_or_413_with_a_json_error(
    gallery_copy, tmp_path, name, data, status, message
):
    path, _ = gallery_copy
    response = _client(path, tmp_path).post("/query", files={"file": (name, data)})
    assert response.status_code == status and message in response.json()["error"]


def test_missing_field_too_many_frames_and_a_bad_min_score_are_clear_errors(gallery_copy, tmp_path):
    path, sources = gallery_copy
    video = _video(sources)
    client = _client(path, tmp_path, limits=UploadLimits(max_bytes=2_000_000, max_frames=3))
    response = client.post("/query", files={"file": ("q.mp4", video.read_bytes())})
    assert response.status_code == 413 and "at most 3 are accepted" in response.json()["error"]
    response = client.post("/query", data={"nothing": "here"})
    assert response.status_code == 400 and "file" in response.json()["error"]
    response = client.post("/query", files={"file": ("q.mp4", b"x")}, params={"min_score": "high"})
    assert response.status_code == 400 and "expected a number, 'auto' or 'off'" in response.json()["error"]
    response = client.post("/query", files={"file": ("q.mp4", b"x")}, params={"min_score": "auto"})
    assert response.status_code == 400 and "no calibrated threshold" in response.json()["error"]


# a "YOLOv8" output holding two people standing apart (see fake_footage.STANDING): x 25-55 and 105-135 in the frame
TWO_STANDING = np.array([[16, 32, 12, 40, 0.9], [48, 32, 12, 40, 0.9]] + [[0, 0, 1, 1, 0.0]] * 7, np.float32).T[None]


def test_footage_gets_the_per_person_answer_of_tfclip_query_and_the_model_loads_once(
    gallery_copy, tmp_path, monkeypatch
):
    path, _ = gallery_copy
    video, detector = tmp_path / "scene.avi", yolo_model(tmp_path / "two.onnx", TWO_STANDING)
    write_video(video, 12)
    loads = []
    inference = importlib.import_module("tfclip_cli.inference")  # where index.search loads a checkpoint's model
    load_model = inference.load_model
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: loads.append(a) or load_model(*a, **k))
    arguments = ["query", str(video), str(video), "--gallery", str(path), "--detector", str(detector), "--json",
                 "--top-k", "3"]
    printed = CliRunner().invoke(cli_app, arguments)
    assert printed.exit_code == 0, printed.output
    assert len(loads) == 1  # two footage queries, two people each: one model
    expected = json.loads(printed.stdout)["queries"][0]
    client = _client(path, tmp_path, detector=str(detector))
    for _ in range(2):
        response = client.post("/query", files={"file": ("scene.avi", video.read_bytes())}, params={"top_k": 3})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert [p["person"] for p in answer["persons"]] == [1, 2] and answer["num_frames"] == 12
        assert [{k: v for k, v in p.items() if k != "key_frames"} for p in answer["persons"]] == expected["persons"]
        assert all(len(p["key_frames"]) == 3 and len(p["hits"]) == 3 for p in answer["persons"])
    assert [box[0] for box in (p["key_box"] for p in answer["persons"])] == pytest.approx([25, 105], abs=1)
    assert len(loads) == 2  # the service loaded its own once, at start


def test_add_then_find_then_delete_a_tracklet_and_its_thumbnails(gallery_copy, tmp_path):
    path, sources = gallery_copy
    folder = _frame_folder(sources)
    client = _client(path, tmp_path)
    rows = client.get("/health").json()["rows"]
    response = client.post("/gallery", files={"file": ("new.zip", _zip_of(folder))},
                           data={"tracklet_id": "cam9/new", "pid": "77", "camid": "1", "start_s": "2.5", "end_s": "4"})
    assert response.status_code == 200, response.text
    assert response.json()["added"] == "cam9/new" and response.json()["rows"] == rows + 1
    assert Path(response.json()["source"]).is_relative_to(tmp_path / "store")
    answer = client.post("/query", files={"file": ("q.zip", _zip_of(folder))}, params={"top_k": 2}).json()
    assert {h["tracklet_id"] for h in answer["hits"]} == {"cam9/new", str(folder)}
    new = next(h for h in answer["hits"] if h["tracklet_id"] == "cam9/new")
    assert (new["pid"], new["camid"], new["start_s"], new["end_s"]) == (77, 1, 2.5, 4.0)
    thumbnail = client.get("/tracklets/cam9%2Fnew/frames/2")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.content[:2] == b"\xff\xd8"
    assert client.get("/tracklets/cam9/new/frames/3").status_code == 404
    again = client.post("/gallery", files={"file": ("new.zip", _zip_of(folder))}, data={"tracklet_id": "cam9/new"})
    assert again.status_code == 400 and "already indexed" in again.json()["error"]
    assert len(list((tmp_path / "store").iterdir())) == 1  # the refused clip was not kept
    assert client.delete("/gallery/cam9/new").json() == {"removed": "cam9/new", "rows": rows}
    answer = client.post("/query", files={"file": ("q.zip", _zip_of(folder))}, params={"top_k": 50}).json()
    assert "cam9/new" not in {h["tracklet_id"] for h in answer["hits"]}
    assert client.delete("/gallery/cam9/new").status_code == 404
    assert client.get("/tracklets/cam9/new/frames/0").status_code == 404
    assert index.load_index(path).info.live_count == rows  # persisted


def test_write_endpoints_need_the_token_when_one_is_set_and_a_public_host_needs_one(gallery_copy, tmp_path):
    path, sources = gallery_copy
    client = _client(path, tmp_path, token="s3cret")
    upload = {"file": ("q.mp4", _video(sources).read_bytes())}
    assert client.post("/gallery", files=upload).status_code == 401
    assert client.post("/gallery", files=upload, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/gallery/anything").status_code == 401
    assert client.post("/query", files=upload).status_code == 200  # searching needs no token
    response = client.post("/gallery", files=upload, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200, response.text
    with pytest.raises(UserError, match="without a token"):
        serve(_config(path, tmp_path), host="0.0.0.0", port=0, token=None)
    result = CliRunner().invoke(cli_app, ["serve", "--gallery", str(path), "--host", "0.0.0.0"], env={})
    assert result.exit_code == 2 and "without a token" in result.output


def test_server_side_paths_are_read_only_under_allowed_directories(gallery_copy, tmp_path):
    path, sources = gallery_copy
    folder = _frame_folder(sources)
    allowed = tmp_path / "allowed"
    shutil.copytree(folder, allowed / "clip")
    (allowed / "link").symlink_to(folder)  # a symlink out of the allowed folder
    client = _client(path, tmp_path, allow_dirs=(allowed,))
    for outside in (str(folder), str(allowed / ".." / ".." / folder.relative_to("/")), str(allowed / "link")):
        response = client.post("/gallery", data={"path": outside, "tracklet_id": "x"})
        assert response.status_code == 403 and "outside the allowed directories" in response.json()["error"]
    response = client.post("/gallery", data={"path": str(allowed / "clip"), "tracklet_id": "inside"})
    assert response.status_code == 200 and response.json()["source"] == str((allowed / "clip").resolve())
    closed = _client(path, tmp_path)
    response = closed.post("/gallery", data={"path": str(allowed / "clip")})
    assert response.status_code == 403 and "--allow-dir" in response.json()["hint"]


def test_queries_during_additions_always_see_a_whole_gallery(gallery_copy, tmp_path):
    path, sources = gallery_copy
    folder, video = _frame_folder(sources), _video(sources)
    client = _client(path, tmp_path)
    before = client.get("/health").json()["rows"]

    def add(number: int) -> int:
        files = {"file": ("new.zip", _zip_of(folder))}
        return client.post("/gallery", files=files, data={"tracklet_id": f"added-{number}"}).status_code

    def ask(_: int) -> dict:
        response = client.post("/query", files={"file": ("q.mp4", video.read_bytes())}, params={"top_k": 100})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(4) as pool:
        added = pool.map(add, range(4))
        answers = list(pool.map(ask, range(8)))
        assert list(added) == [200] * 4
    for answer in answers:  # each answer ranks one whole gallery: the original rows plus some of the additions
        ids = [h["tracklet_id"] for h in answer["hits"]]
        assert len(set(ids)) == len(ids) and before <= len(ids) <= before + 4
    stats = client.get("/stats").json()
    assert stats["rows"] == before + 4 and stats["queries_served"] == 8 and stats["latency_ms"]["p50"] > 0
    assert stats["dim"] == 320 and stats["checkpoint"].endswith("model.ckpt")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Server:
    """uvicorn serving the app in a thread on a free loopback port."""

    def __init__(self, config: ServeConfig) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(Service(config), token=None, hosts=LOOPBACK)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_a_real_server_adds_and_removes_and_a_restart_reloads_the_persisted_gallery(gallery_copy, tmp_path):
    path, sources = gallery_copy
    folder = _frame_folder(sources)
    with _Server(_config(path, tmp_path)) as server:
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        assert "<title>tfclip" in httpx.get(f"{server.url}/").text
        response = httpx.post(f"{server.url}/gallery", files={"file": ("a.zip", _zip_of(folder))},
                              data={"tracklet_id": "kept"}, timeout=60)
        assert response.status_code == 200, response.text
        removed = httpx.delete(f"{server.url}/gallery/{sources[0]}", timeout=60)
        assert removed.status_code == 200, removed.text
    with _Server(_config(path, tmp_path)) as server:  # a restart: everything comes from the file
        answer = httpx.post(f"{server.url}/query", files={"file": ("q.zip", _zip_of(folder))},
                            params={"top_k": 100}, timeout=60).json()
        ids = {h["tracklet_id"] for h in answer["hits"]}
        assert "kept" in ids and sources[0] not in ids
        assert httpx.get(f"{server.url}/tracklets/kept/frames/0").content[:2] == b"\xff\xd8"


# ------------------------------------------------------------------ the page in headless Chromium


class _DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; messages end in NUL)."""

    def __init__(self) -> None:
        to_browser, self._command = os.pipe()
        self._answers, from_browser = os.pipe()

        def wire() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--disable-background-networking", "--window-size=1200,900", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._command, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._answers, 1 << 16)
                assert chunk, "chromium closed its DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, session: str, expression: str):
        return self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self._command)
        os.close(self._answers)


def _upload_on_page(devtools, url: str, video: Path) -> str:
    """Open the page at ``url`` in headless Chromium and choose ``video`` in its file box; the page's session id."""
    target = devtools.call("Target.createTarget", url=f"{url}/")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    _wait_for(devtools, session, "document.readyState === 'complete' && !!document.getElementById('file')")
    devtools.call("DOM.enable", session)
    root = devtools.call("DOM.getDocument", session)["root"]["nodeId"]
    node = devtools.call("DOM.querySelector", session, nodeId=root, selector="#file")["nodeId"]
    devtools.call("DOM.setFileInputFiles", session, nodeId=node, files=[str(video)])
    return session


def _wait_for(devtools: _DevTools, session: str, expression: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := devtools.evaluate(session, expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.2)
    return value


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_page_shows_the_query_frames_ranked_hits_with_thumbnails_and_a_plain_no_match(gallery_copy, tmp_path):
    path, sources = gallery_copy
    video = _video(sources)
    index.store.update_header(path, calibration={"threshold": 1.01, "fmr": 0.01})  # above any score: no match
    devtools = _DevTools()
    try:
        with _Server(_config(path, tmp_path)) as server:
            session = _upload_on_page(devtools, server.url, video)
            verdict = _wait_for(devtools, session, "document.getElementById('verdict').className === 'nomatch' && "
                                "document.getElementById('verdict').textContent")
            assert verdict == "no match: no gallery tracklet scores >= 1.0100"
            rows = devtools.evaluate(session, "document.querySelectorAll('#hits tr').length")
            first = devtools.evaluate(session, "document.querySelector('#hits tr:nth-child(2)').textContent")
            assert rows == 11 and str(video) in first and "1.0000" in first
            drawn = "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
            _wait_for(devtools, session, f"{drawn} >= 3 + 3 * 10")  # the query's 3 frames, 3 per hit
            assert _text(devtools, session, "#calibration-summary") == [  # a per-pair threshold: no pictures
                "threshold 1.0100 by the per-pair rule at false-match rate 0.01 (pictures are drawn for per-search "
                "calibrations)"]
            assert devtools.evaluate(session, "document.getElementById('det').hidden") is True
    finally:
        devtools.close()


# ------------------------------------------------------------------ other web pages, and bodies without a length


def test_a_host_the_server_was_not_started_for_is_refused_and_its_own_names_answered(gallery_copy, tmp_path):
    path, _ = gallery_copy
    client = _client(path, tmp_path, hosts=allowed_hosts("127.0.0.1", ["reid.example.org"]))
    for host in ("attacker.example:8000", "attacker.example", "127.0.0.1.attacker.example:8000"):  # DNS rebinding
        response = client.get("/health", headers={"host": host})
        assert response.status_code == 421 and host in response.json()["error"]
        assert "--allow-host" in response.json()["hint"] and "localhost" not in response.json()["error"]
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST.:8000", "[::1]:8000", "reid.example.org"):
        assert client.get("/health", headers={"host": host}).status_code == 200, host
    assert client.post("/gallery", headers={"host": "attacker.example"}).status_code == 421  # before any token


def test_tfclip_serve_answers_the_names_given_with_allow_host(gallery_copy, monkeypatch):
    path, _ = gallery_copy
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    arguments = ["serve", "--gallery", str(path), "--port", "8123", "--allow-host", "reid.example.org",
                 "--allow-host", "reid.internal"]
    result = CliRunner().invoke(cli_app, arguments)
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    client = TestClient(started["app"], base_url="http://127.0.0.1:8123")
    for host, status in (("reid.example.org", 200), ("reid.internal:443", 200), ("localhost:8123", 200),
                         ("reid.example.com", 421)):
        assert client.get("/health", headers={"host": host}).status_code == status, host


def test_the_names_of_a_server_depend_on_the_address_it_is_bound_to():
    assert allowed_hosts("127.0.0.1").names == {"127.0.0.1", "localhost", "::1"}
    specific = allowed_hosts("192.168.1.5", ["Reid.Example.org"])
    assert specific.allows("192.168.1.5:8000") and specific.allows("reid.example.org")
    assert not specific.allows("192.168.1.6:8000") and not specific.allows("localhost:8000")
    everywhere = allowed_hosts("0.0.0.0")
    assert everywhere.allows("10.1.2.3:8000") and everywhere.allows("[fe80::1]:8000")
    assert everywhere.allows("localhost") and not everywhere.allows("attacker.example:8000")


def test_a_cross_site_write_is_refused_and_a_same_origin_one_accepted_and_gets_come_from_anywhere(
    gallery_copy, tmp_path
):
    path, sources = gallery_copy
    client = _client(path, tmp_path, hosts=allowed_hosts("127.0.0.1", ["reid.example.org"]))
    rows = client.get("/health").json()["rows"]
    form = {"path": sources[0], "tracklet_id": "planted"}  # what a hidden form on another page would post
    for headers in ({"origin": "http://attacker.example"}, {"origin": "null"},
                    {"origin": "http://127.0.0.1:3000"},  # another local server's page: another origin
                    {"sec-fetch-site": "cross-site"}):
        response = client.post("/gallery", data=form, headers=headers)
        assert response.status_code == 403 and "refused" in response.json()["error"], headers
        assert client.delete(f"/gallery/{sources[0]}", headers=headers).status_code == 403
        assert client.post("/query", files={"file": ("q.mp4", b"x")}, headers=headers).status_code == 403
    assert client.get("/health").json()["rows"] == rows and index.load_index(path).info.live_count == rows
    video = _video(sources)
    same_origin = {"origin": BASE_URL, "sec-fetch-site": "same-origin"}
    response = client.post("/query", files={"file": ("q.mp4", video.read_bytes())}, headers=same_origin)
    assert response.status_code == 200 and response.json()["hits"][0]["tracklet_id"] == str(video)
    proxied = {"host": "127.0.0.1:8000", "origin": "https://reid.example.org"}  # a proxy that rewrites Host
    assert client.delete("/gallery/unknown", headers=proxied).status_code == 404  # past the guard
    assert client.delete("/gallery/unknown").status_code == 404  # no browser (curl): no Origin, no Sec-Fetch-Site
    cross_site = {"origin": "http://attacker.example", "sec-fetch-site": "cross-site"}
    assert client.get("/stats", headers=cross_site).json()["rows"] == rows
    assert client.get("/", headers=cross_site).status_code == 200


SMALL = UploadLimits(max_bytes=200_000, max_frames=100)  # limit + multipart slack stay below the 1 MiB spool size
CHUNK = 32 * 1024


def _multipart_chunks(total: int) -> list[bytes]:
    """A multipart body with one file field of ``total`` bytes, in ``CHUNK``-byte pieces."""
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'
    return [head] + [b"\0" * CHUNK] * (total // CHUNK) + [b"\r\n--B--\r\n"]


@pytest.fixture()
def watched_temp(tmp_path, monkeypatch):
    """A fresh temporary folder for everything tempfile makes, and the anonymous files spooled to disk."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    spooled = []
    anonymous = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spooled.append(a) or anonymous(*a, **k))
    return folder, spooled


def test_a_chunked_upload_past_the_limit_is_refused_as_it_arrives_and_nothing_reaches_disk(
    gallery_copy, tmp_path, watched_temp
):
    path, _ = gallery_copy
    folder, spooled = watched_temp
    app = create_app(Service(_config(path, tmp_path, limits=SMALL)), token=None, hosts=LOOPBACK)
    chunks, pulled, sent = _multipart_chunks(8 * 2**20), [], []

    async def receive() -> dict:
        pulled.append(chunks[len(pulled)])
        return {"type": "http.request", "body": pulled[-1], "more_body": len(pulled) < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/query", "raw_path": b"/query", "query_string": b"", "root_path": "", "server": None,
             "client": ("127.0.0.1", 1), "headers": [(b"host", b"127.0.0.1:8000"),
                                                     (b"content-type", b"multipart/form-data; boundary=B"),
                                                     (b"transfer-encoding", b"chunked")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"the rest was not read" in sent[1]["body"]
    assert sum(map(len, pulled)) <= SMALL.max_bytes + MULTIPART_SLACK + CHUNK  # 8 MiB offered, ~260 kB read
    assert not list(folder.iterdir()) and not spooled
    with _client(path, tmp_path, limits=SMALL) as client:  # the same through HTTP: a generator body, no length
        response = client.post("/query", content=iter(_multipart_chunks(2 * 2**20)),
                               headers={"content-type": "multipart/form-data; boundary=B"})
    assert response.status_code == 413 and "at most" not in response.json()["error"]
    assert "content-length" not in response.request.headers
    assert not list(folder.iterdir()) and not spooled


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_page_shows_each_person_of_uploaded_footage_with_their_hits(gallery_copy, tmp_path):
    path, _ = gallery_copy
    video, detector = tmp_path / "scene.avi", yolo_model(tmp_path / "two.onnx", TWO_STANDING)
    write_video(video, 12)
    devtools = _DevTools()
    try:
        with _Server(_config(path, tmp_path, detector=str(detector))) as server:
            session = _upload_on_page(devtools, server.url, video)
            verdict = _wait_for(devtools, session, "document.querySelectorAll('.person').length === 2 && "
                                "document.getElementById('verdict').textContent")
            assert verdict == "footage: 2 person(s) found in 12 frames, each searched for"
            titles = devtools.evaluate(session, "[...document.querySelectorAll('.person')].map(p => p.textContent)")
            assert titles == ["person 1, frames 0-11 (0.0-1.2 s)ranked hits (no calibrated threshold: no verdict)",
                              "person 2, frames 0-11 (0.0-1.2 s)ranked hits (no calibrated threshold: no verdict)"]
            rows = devtools.evaluate(session, "document.querySelectorAll('#persons table tr').length")
            assert rows == 2 * 11  # a header and 10 hits per person
            assert devtools.evaluate(session, "document.querySelectorAll('#hits tr').length") == 0
    finally:
        devtools.close()


def test_an_upload_to_a_store_that_cannot_be_written_is_a_json_error_and_the_gallery_is_unchanged(gallery_copy,
                                                                                                   tmp_path):
    path, sources = gallery_copy
    (tmp_path / "file").write_text("x")
    client = _client(path, tmp_path, store=tmp_path / "file" / "store")
    before = path.read_bytes()
    response = client.post("/gallery", files={"file": ("new.zip", _zip_of(_frame_folder(sources)))})
    assert response.status_code == 400
    assert response.json()["error"] == f"cannot write {tmp_path}/file/store: a part of the path is a file, not a folder"
    assert path.read_bytes() == before


# ------------------------------------------------------------------ the camera view: latest tracklets, search with one

T0 = 1796299200.0  # 2026-12-03T12:00:00Z


def _footage_rows(table, ids: list[str], *, camids, starts, video: str):
    """``table``'s rows renamed ``ids`` and made footage of camera ``camids[i]`` filmed from ``starts[i]`` for 5 s,
    key frame 0 of ``video`` with the person in box (1, 2, 20, 40)."""
    rows = table.rows.iloc[:len(ids)].copy()
    rows["tracklet_id"], rows["camid"] = ids, camids
    rows["source_video"], rows["first_frame"], rows["last_frame"] = video, 0, 1
    rows["start_s"], rows["end_s"] = 0.0, 0.1
    rows["boxes"] = [[[1.0, 2.0, 20.0, 40.0]] * 2] * len(ids)
    rows["start_time"] = np.asarray(starts, dtype=float)
    rows["end_time"] = rows["start_time"] + 5.0
    return Embeddings(rows.reset_index(drop=True), table.vectors[:len(ids)], table.info)


@pytest.fixture()
def live_gallery(tiny_gallery, tmp_path):  # noqa: F811
    """The tiny gallery's first 9 tracklets as footage of cameras 0-2: tracklet ``c<i % 3>-<i>`` filmed from T0 + 10 i
    s; c0-0 and c1-4 linked to person 7. The gallery, its embeddings table and its video."""
    path, _, sources = tiny_gallery
    table = read_embeddings(path.parent / "e.parquet")
    video = _video(sources)
    ids = [f"c{i % 3}-{i}" for i in range(9)]
    live = tmp_path / "live.faiss"
    index.build_index(_footage_rows(table, ids, camids=[i % 3 for i in range(9)],
                                    starts=[T0 + 10 * i for i in range(9)], video=str(video)), live)
    index.set_person_ids(live, {"c0-0": 7, "c1-4": 7})
    return live, table, video


def test_cameras_answers_each_camera_s_latest_tracklets_newest_first_and_sees_appends(live_gallery, tmp_path):
    path, table, video = live_gallery
    client = _client(path, tmp_path)
    answer = client.get("/cameras", params={"latest": 2}).json()
    assert answer["rows"] == 9 and [c["camid"] for c in answer["cameras"]] == [0, 1, 2]
    assert [c["tracklets"] for c in answer["cameras"]] == [3, 3, 3]
    assert [[t["tracklet_id"] for t in c["latest"]] for c in answer["cameras"]] == [
        ["c0-6", "c0-3"], ["c1-7", "c1-4"], ["c2-8", "c2-5"]]
    card = answer["cameras"][1]["latest"][1]
    assert card == {"tracklet_id": "c1-4", "camid": 1, "num_frames": card["num_frames"], "person": 7,
                    "start_time": T0 + 40, "end_time": T0 + 45, "start_s": 0.0, "end_s": 0.1,
                    "source": table.rows["tracklet_id"][4],  # extracted from paths: the id is the source
                    "crop_url": "/tracklets/c1-4/crop", "search_url": "/tracklets/c1-4/search"}
    assert answer["cameras"][0]["latest"][0]["person"] is None
    index.append_to_index(_footage_rows(table, ["c1-new", "c5-new"], camids=[1, 5], starts=[T0 + 100, T0 + 1],
                                        video=str(video)), path)
    answer = client.get("/cameras", params={"latest": 2}).json()  # the service reloads the grown gallery
    assert answer["rows"] == 11 and [c["camid"] for c in answer["cameras"]] == [0, 1, 2, 5]
    assert [t["tracklet_id"] for t in answer["cameras"][1]["latest"]] == ["c1-new", "c1-7"]
    assert client.delete("/gallery/c1-new").status_code == 200
    assert [t["tracklet_id"] for t in client.get("/cameras").json()["cameras"][1]["latest"]] == ["c1-7", "c1-4", "c1-1"]
    assert client.get("/cameras", params={"latest": 0}).status_code == 400


def test_rows_without_wall_clock_times_are_latest_by_the_order_they_were_added(gallery_copy, tmp_path):
    path, sources = gallery_copy
    rows = index.load_index(path).rows
    answer = _client(path, tmp_path).get("/cameras", params={"latest": 3}).json()
    (camera,) = answer["cameras"]  # extracted from paths: every camid -1
    assert camera["camid"] == -1 and camera["tracklets"] == len(rows)
    assert [t["tracklet_id"] for t in camera["latest"]] == list(rows["tracklet_id"][::-1][:3])
    assert camera["latest"][0]["start_time"] is None and camera["latest"][0]["person"] is None


def test_the_latest_rows_of_a_camera_are_those_a_sort_of_every_row_puts_first():
    for seed in range(200):  # ends with many ties and unknowns (-inf), against sorting (end, row) descending
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(1000, rng.integers(1, 30), replace=False))
        ends, count = rng.choice([-np.inf, 1.0, 2.0, 3.0], len(rows)), int(rng.integers(1, 10))
        expected = [row for _, row in sorted(zip(ends, rows), reverse=True)[:count]]
        assert latest_rows(rows, ends, count).tolist() == expected, seed


def test_a_click_on_a_tracklet_searches_with_its_own_embedding_and_finds_it_first(live_gallery, tmp_path):
    path, _, _ = live_gallery
    client = _client(path, tmp_path)
    answer = client.get("/tracklets/c1-4/search", params={"top_k": 3}).json()
    assert answer["query"] == "c1-4" and [h["rank"] for h in answer["hits"]] == [1, 2, 3]
    card = next(c for c in client.get("/cameras").json()["cameras"][1]["latest"] if c["tracklet_id"] == "c1-4")
    assert answer["tracklet"] == card  # what was searched with, as the camera view shows it
    first = answer["hits"][0]
    assert first["tracklet_id"] == "c1-4" and first["score"] == pytest.approx(1.0, abs=1e-5)
    assert first["person"] == 7 and [v["tracklet_ids"] for v in first["timeline"]] == [["c0-0"], ["c1-4"]]
    assert len(answer["key_frames"]) == 1 and answer["key_frames"][0].startswith("data:image/jpeg;base64,")
    assert answer["threshold"] is None and answer["match"] is None
    vectors = index.load_index(path).index.reconstruct_n(0, 9)  # the same ranking as a search with the vector
    (expected,) = index.search(index.load_index(path), vectors[4:5], 3)
    assert [h["tracklet_id"] for h in answer["hits"]] == [h.tracklet_id for h in expected]
    others = client.get("/tracklets/c1-4/search", params={"cameras": "0,2", "top_k": 20}).json()
    assert {h["camid"] for h in others["hits"]} == {0, 2} and len(others["hits"]) == 6
    missing = client.get("/tracklets/nobody/search")
    assert missing.status_code == 404 and "holds no tracklet nobody" in missing.json()["error"]
    assert client.get("/tracklets/c1-4/search", params={"min_score": "auto"}).status_code == 400


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_a_search_with_a_gallery_tracklet_finds_it_first_in_every_index_type(tmp_path, index_type):
    vectors, _ = _clustered(700, 16, seed=2)  # ivfpq needs 624 rows or more
    path = tmp_path / f"{index_type}.faiss"
    index.build_index(_embeddings(vectors), path, index_type=index_type)
    index.remove_from_index(path, ["t5"])
    gallery = index.load_index(path)
    for tracklet_id in ("t0", "t123", "t699"):
        result = index.search_with_tracklet(gallery, tracklet_id, index.SearchOptions(top_k=5))
        assert result.hits[0].tracklet_id == tracklet_id and result.hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert result.source == f"/videos/{tracklet_id}.mp4" and len(result.hits) == 5
    with pytest.raises(GalleryError, match="holds no tracklet t5"):  # removed
        index.search_with_tracklet(gallery, "t5")


def test_a_footage_tracklet_s_crop_is_its_key_frame_cut_to_the_person(live_gallery, tmp_path):
    path, _, video = live_gallery
    client = _client(path, tmp_path)
    crop = client.get("/tracklets/c1-4/crop")
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
    # box (1, 2, 20, 40) and 15% of its 38 px height (5.7 px) around it, cut at the frame's top and left edges
    assert Image.open(io.BytesIO(crop.content)).size == (26, 46)
    assert client.get("/tracklets/nobody/crop").status_code == 404


INGEST = {"sources": [
    {"name": "lobby", "camera": 1, "state": "running", "frames_read": 400, "frames_processed": 380,
     "frames_dropped": 20, "reconnects": 1, "open_tracks": 2, "tracklets_appended": 3, "lag_p50_s": 1.25,
     "lag_p95_s": 4.5},
    {"name": "door", "camera": 2, "state": "reconnecting", "frames_read": 0, "frames_processed": 0,
     "frames_dropped": 0, "reconnects": 3, "open_tracks": 0, "tracklets_appended": 0, "lag_p50_s": None,
     "lag_p95_s": None},
]}


def _text(devtools, session: str, selector: str) -> list[str]:
    return devtools.evaluate(session, f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent)")


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_page_shows_each_camera_s_latest_tracklets_live_and_a_click_searches_with_one(
    live_gallery, tmp_path, monkeypatch
):
    path, table, video = live_gallery
    ingest = {}  # what /stats adds: nothing at first, then the figures of `serve --watch`
    stats = Service.stats
    monkeypatch.setattr(Service, "stats", lambda self: {**stats(self), **ingest})
    devtools = _DevTools()
    try:
        with _Server(_config(path, tmp_path)) as server:
            target = devtools.call("Target.createTarget", url=f"{server.url}/")["targetId"]
            session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            _wait_for(devtools, session, "document.querySelectorAll('.card').length === 9")
            assert _text(devtools, session, ".camera-title") == [
                "camera 03 tracklet(s)", "camera 13 tracklet(s)", "camera 23 tracklet(s)"]
            assert _text(devtools, session, "[data-camid='1'] .card") == [  # c1-7, c1-4, c1-1: newest first
                "12:01:10\u201312:01:15", "12:00:40\u201312:00:45person 7", "12:00:10\u201312:00:15"]
            drawn = "[...document.querySelectorAll('.card img')].filter(i => i.complete && i.naturalWidth > 0).length"
            _wait_for(devtools, session, f"{drawn} === 9")  # every person crop loaded
            assert devtools.evaluate(session, "document.getElementById('ingest-view').hidden") is True

            index.append_to_index(_footage_rows(table, ["c1-new"], camids=[1], starts=[T0 + 100], video=str(video)),
                                  path)  # while the page is open
            _wait_for(devtools, session, "!!document.querySelector('[data-tracklet=\"c1-new\"]')")
            assert devtools.evaluate(session, "[...document.querySelectorAll('[data-camid=\"1\"] .card')]"
                                     ".map(c => c.dataset.tracklet)") == ["c1-new", "c1-7", "c1-4", "c1-1"]
            assert devtools.evaluate(session, "document.querySelector('[data-tracklet=\"c1-new\"]').className") == \
                "card fresh"  # marked as new; the others not
            assert devtools.evaluate(session, "document.querySelectorAll('.card.fresh').length") == 1
            assert _text(devtools, session, ".camera-title")[1] == "camera 14 tracklet(s)"

            ingest["ingest"] = INGEST
            _wait_for(devtools, session, "!document.getElementById('ingest-view').hidden")
            rows = _text(devtools, session, "#ingest tr")
            assert rows[1:] == ["lobby1running40038020 (5.0%)1231.3 s4.5 s", "door2reconnecting000300--"]
            _wait_for(devtools, session, "document.querySelector('[data-camid=\"1\"] .camera-title')"
                      ".textContent.includes('lobby')")

            devtools.evaluate(session, "document.querySelector('[data-tracklet=\"c1-4\"]').click()")
            _wait_for(devtools, session, "document.querySelectorAll('#hits tr').length === 11")
            first = _text(devtools, session, "#hits tr:nth-child(2) td")
            assert first[:4] == ["1", "1.0000", "-", "7"] and first[6].startswith("c1-4")
            assert _text(devtools, session, "#query-frames")[0].startswith(
                "tracklet c1-4 (camera 1, 12:00:40\u201312:00:45 UTC)")
            timeline = _wait_for(devtools, session, "document.querySelector('#person h2') && "
                                 "document.querySelector('#person h2').textContent")
            assert timeline == "person 7: cam0 12:00:00-12:00:05 \u2192 cam1 12:00:40-12:00:45 (UTC)"
            devtools.evaluate(session, "document.getElementById('person').replaceChildren(); "
                              "document.querySelector('#hits tr.linked').click()")  # a linked hit: its timeline
            again = _wait_for(devtools, session, "document.querySelector('#person h2') && "
                              "document.querySelector('#person h2').textContent")
            assert again == timeline
            assert devtools.evaluate(session, "document.querySelectorAll('#person img').length") == 2
    finally:
        devtools.close()


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_stats_view_draws_the_stored_det_curve_and_score_histograms(live_gallery, tmp_path):
    path, _, _ = live_gallery
    devtools = _DevTools()
    try:
        with _Server(_config(path, tmp_path)) as server:  # a link to a tracklet's search opens with its hits
            target = devtools.call("Target.createTarget", url=f"{server.url}/#tracklet=c2-5")["targetId"]
            session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            _wait_for(devtools, session, "document.querySelectorAll('#hits tr').length === 10")  # 9 hits
            assert _text(devtools, session, "#hits tr:nth-child(2) td")[6].startswith("c2-5")
            message = _wait_for(devtools, session, "document.getElementById('calibration-empty').textContent")
            assert message == f"not calibrated: no match verdicts; calibrate with tfclip calibrate VAL.parquet " \
                              f"--gallery {path}"
            assert devtools.evaluate(session, "document.getElementById('det').hidden") is True

            rng = np.random.default_rng(0)  # 60 people seen 3 times: best scores with some overlap
            vectors = np.repeat(rng.standard_normal((60, 16)), 3, axis=0) + 0.7 * rng.standard_normal((180, 16))
            rows = pd.DataFrame({"tracklet_id": [f"v{i}" for i in range(180)], "pid": np.repeat(np.arange(60), 3),
                                 "camid": 0, "split": "query", "num_frames": 4, "frames": None, "video": "v.mp4"})
            result = index.calibrate_search_threshold(Embeddings(rows, vectors.astype(np.float32), {}), 0.1)
            figures = index.calibration_figures(result)
            index.store.update_header(path, calibration={**result.to_dict(), **figures})  # as calibrate stores it

            _wait_for(devtools, session, "!document.getElementById('det').hidden")
            summary = _text(devtools, session, "#calibration-summary")[0]
            assert summary.startswith(f"threshold {result.threshold:.4f} at FPIR 0.1 (measured "
                                      f"{result.measured_fpir:.4f}), FNIR {100 * result.fnir:.1f}% at rank 1")
            points = devtools.evaluate(session, "document.querySelector('#det polyline.det')"
                                       ".getAttribute('points').split(' ').length")
            assert points == sum(fpir > 0 for fpir in figures["curve"]["fpir"])  # FPIR 0 is off a log axis
            marker = devtools.evaluate(session, "(() => { const b = document.querySelector('#det .operating')"
                                       ".getBBox(); return [b.x + b.width / 2, b.y + b.height / 2]; })()")
            low = min(min(f for f in figures["curve"]["fpir"] if f > 0), result.measured_fpir) / 1.5
            share = (np.log10(result.measured_fpir) - np.log10(low)) / (np.log10(1.5) - np.log10(low))
            assert marker == pytest.approx([64 + share * 430, 30 + (1 - 100 * result.fnir / 101) * 230], abs=0.5)
            assert "chosen threshold" in _text(devtools, session, "#det")[0]
            bins = devtools.evaluate(session, "[document.querySelectorAll('#histograms rect.mated').length, "
                                     "document.querySelectorAll('#histograms rect.nonmated').length]")
            histograms = figures["histograms"]
            assert bins == [sum(c > 0 for c in histograms["mated"]), sum(c > 0 for c in histograms["nonmated"])]
            line = devtools.evaluate(session, "Number(document.querySelector('#histograms line.threshold')"
                                     ".getAttribute('x1'))")
            edges = histograms["edges"]
            assert line == pytest.approx(64 + (result.threshold - edges[0]) / (edges[-1] - edges[0]) * 430, abs=0.01)
    finally:
        devtools.close()
def test_the_service_sees_tracklets_appended_to_the_log_by_another_process_without_a_restart(
        gallery_copy, tmp_path, monkeypatch):
    path, _ = gallery_copy
    monkeypatch.setattr(index.store, "COMPACT_SHARE", 1e9)  # the append stays in the log
    client = _client(path, tmp_path)
    rows = client.get("/stats").json()["rows"]
    gallery = index.load_index(path)
    vector = np.random.default_rng(0).standard_normal((1, gallery.info.dim)).astype(np.float32)
    new = gallery.rows.iloc[:1].assign(tracklet_id="cam7/live-1")
    info = {"checkpoint": gallery.info.checkpoint, "checkpoint_sha256": gallery.info.checkpoint_sha256}
    index.append_to_index(Embeddings(rows=new, vectors=vector, info=info), path)  # as `tfclip watch` does
    base = path.read_bytes()
    assert client.get("/stats").json()["rows"] == rows + 1 and path.read_bytes() == base
    assert client.get("/tracklets/cam7/live-1/frames/0").status_code == 200
