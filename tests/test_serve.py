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
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fake_footage import write_video, yolo_model
from test_index import tiny_gallery  # noqa: F401  (the module-scoped gallery fixture, reused)
from tfclip_cli import index
from tfclip_cli.cli import app as cli_app
from tfclip_cli.errors import UserError
from tfclip_cli.serve.app import MULTIPART_SLACK, create_app, serve
from tfclip_cli.serve.guard import allowed_hosts
from tfclip_cli.serve.service import ServeConfig, Service
from tfclip_cli.serve.uploads import UploadLimits

LIMITS = UploadLimits(max_bytes=2_000_000, max_frames=100)


def _config(gallery: Path, tmp_path: Path, **changes) -> ServeConfig:
    values = dict(gallery=gallery, checkpoint=None, device=torch.device("cpu"), limits=LIMITS, allow_dirs=(),
                  store=tmp_path / "store", detector="hog")  # hog finds nobody in 64×32 frames: every clip a crop
    return ServeConfig(**{**values, **changes})


@pytest.fixture()
def gallery_copy(tiny_gallery, tmp_path):  # noqa: F811
    """A private copy of the tiny gallery (the service writes to it) and the gallery's sources."""
    path, _, sources = tiny_gallery
    shutil.copy(path, tmp_path / "g.faiss")
    return tmp_path / "g.faiss", sources


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
