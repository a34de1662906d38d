"""Answers with people on a linked gallery: `tfclip query` hits carry `person` and `timeline`, the table groups
hits by person, the HTML report draws timelines, and `tfclip serve` answers GET /people/{id}."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from test_index import tiny_gallery  # noqa: F401  (the module-scoped gallery fixture, reused)
from tfclip_cli import index
from tfclip_cli.cli import app
from tfclip_cli.people.timeline import build_people
from tfclip_cli.serve.app import create_app
from tfclip_cli.serve.guard import allowed_hosts
from tfclip_cli.serve.service import ServeConfig, Service
from tfclip_cli.serve.uploads import UploadLimits
from tfclip_cli.tables import Embeddings, read_embeddings

T0 = 1796299200.0  # 2026-12-03T12:00:00Z


@pytest.fixture(scope="module")
def linked(tiny_gallery, tmp_path_factory):  # noqa: F811
    """The tiny gallery rebuilt with footage columns (row i filmed by camera i % 4, 10 s after row i - 1, in one of
    the videos) and person ids: row i belongs to person i % 3; and the gallery's sources."""
    path, _, sources = tiny_gallery
    folder = tmp_path_factory.mktemp("linked")
    table = read_embeddings(path.parent / "e.parquet")
    rows, count = table.rows.copy(), len(table.rows)
    video = next(s for s in sources if s.endswith(".mp4"))
    rows["camid"] = np.arange(count) % 4
    rows["source_video"] = video
    rows["first_frame"], rows["last_frame"] = 0, 1
    rows["start_s"], rows["end_s"] = 0.0, 0.1
    rows["boxes"] = [[[1.0, 2.0, 20.0, 40.0]] * 2] * count
    rows["start_time"] = T0 + 10.0 * np.arange(count)
    rows["end_time"] = rows["start_time"] + 5.0
    index.build_index(Embeddings(rows, table.vectors, table.info), folder / "g.faiss")
    index.set_person_ids(folder / "g.faiss", {str(t): i % 3 for i, t in enumerate(rows["tracklet_id"])})
    return folder / "g.faiss", sources


def test_query_hits_carry_their_person_and_the_person_s_timeline(linked):
    path, sources = linked
    result = CliRunner().invoke(app, ["query", sources[1], "--gallery", str(path), "-k", "4", "--json"])
    assert result.exit_code == 0, result.output
    ((answer,),) = (query["persons"] for query in json.loads(result.stdout)["queries"])  # one query, one person
    people = build_people(index.load_index(path).rows)
    for hit in answer["hits"]:
        person = people[hit["person"]]
        assert hit["person"] == hit["row"] % 3
        assert hit["timeline"] == person.to_dict()["visits"]
        assert hit["tracklet_id"] in [t for visit in hit["timeline"] for t in visit["tracklet_ids"]]
        times = [visit["start_time"] for visit in hit["timeline"]]
        assert times == sorted(times) and times[0] == T0 + 10.0 * (hit["person"])


def test_the_table_groups_hits_by_person_and_the_report_draws_timelines(linked, tmp_path):
    path, sources = linked
    report = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["query", sources[1], "--gallery", str(path), "-k", "6", "--html", str(report)],
                                terminal_width=400)
    assert result.exit_code == 0, result.output
    assert ": people" in result.stdout
    assert "cam0 12:00:00-12:00:05 → cam3 12:00:30-12:00:35 →" in result.stdout  # person 0: rows 0, 3, ...
    person_rows = [line for line in result.stdout.splitlines() if "hit(s)" in line]
    assert len(person_rows) == 3  # six hits of three people: one heading each
    page = report.read_text()
    assert page.count('class="timeline"') == 3 and "People among the hits" in page
    assert page.count('class="visit"') == len(index.load_index(path).rows)  # every visit of the three people
    assert page.count("data:image/jpeg") > 6  # the visits' key frames besides the hits'


def test_an_unlinked_gallery_answers_as_before(tiny_gallery):  # noqa: F811
    path, _, sources = tiny_gallery
    result = CliRunner().invoke(app, ["query", sources[1], "--gallery", str(path), "-k", "2", "--json"])
    ((answer,),) = (query["persons"] for query in json.loads(result.stdout)["queries"])
    assert all(hit["person"] is None and hit["timeline"] is None for hit in answer["hits"])


def test_get_people_returns_the_timeline_with_key_frames(linked, tmp_path):
    path, _ = linked
    config = ServeConfig(gallery=path, checkpoint=None, device=torch.device("cpu"),
                         limits=UploadLimits(max_bytes=2_000_000, max_frames=100), allow_dirs=(),
                         store=tmp_path / "store", detector="hog")
    app = create_app(Service(config), token=None, hosts=allowed_hosts("127.0.0.1"))
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    person = client.get("/people/1").json()
    rows = index.load_index(path).rows
    mine = [str(t) for i, t in enumerate(rows["tracklet_id"]) if i % 3 == 1]
    assert person["person"] == 1 and [v["tracklet_ids"] for v in person["visits"]] == [[t] for t in mine]
    assert person["visits"][0]["start_time"] == T0 + 10.0
    url = person["visits"][0]["key_frame_url"]
    frame = client.get(url)
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    missing = client.get("/people/99")
    assert missing.status_code == 404 and "holds no person 99" in missing.json()["error"]
