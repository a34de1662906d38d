"""`tfclip demo --quick` end to end: it learns, finds the query's identity, follows one walker of a camera network
across cameras, writes its report, resumes without redoing finished steps, and never deletes a folder it did not
write."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from html_check import check_page

from tfclip_cli.cli import app
from tfclip_cli.demo import DemoPaths, pick_query, pick_walker, run_demo
from tfclip_cli.errors import DataError, UserError
from tfclip_cli.tables import Manifest, ManifestInfo, Tracklet, manifest_from_tracklets, read_manifest


def _invoke(*args: object):
    return CliRunner().invoke(app, ["demo", *map(str, args)], terminal_width=400)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoPaths, str]:
    """One `tfclip demo --quick --force` run over the remains of an earlier demo, shared by the tests below (the
    expensive part: about 1.5 minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("demo") / "tfclip-demo"
    out.mkdir()
    (out / "demo.json").write_text('{"plan": "default"}')
    (out / "report.html").write_text("stale report")
    result = _invoke("--out", out, "--quick", "--force")
    assert result.exit_code == 0, result.output
    return DemoPaths.under(out), result.output


def test_quick_demo_replaces_an_earlier_demo_prints_metrics_and_reports_the_query(
    quick_demo: tuple[DemoPaths, str],
) -> None:
    paths, output = quick_demo
    assert "mAP" in output and "before training" in output and "after training" in output
    assert "what next" in output and "tfclip prepare mars /data/MARS --out mars.parquet" in output
    assert json.loads(paths.plan.read_text())["plan"] == "quick"  # --force replaced the earlier demo
    query = pick_query(read_manifest(paths.manifest))
    assert query.video is not None and query.split == "query"
    report = paths.report.read_text(encoding="utf-8")
    assert query.tracklet_id in report
    # one page: training curves, CMC curve, the query's 5 hits with key frames, the walker's timeline figure
    page = check_page(paths.report)
    assert page.tags.count("svg") == 3 and "Training curves" in report and "Cumulative matching" in report
    assert report.count('<td class="number">') >= 5 * 4 and "data:image/jpeg;base64," in report
    assert "One person across cameras" in report and "across cameras (linked by tfclip link)" in report
    assert "--detector gt</code>: the ground truth replayed" in report
    for path in (paths.initial_checkpoint, paths.trained_checkpoint, paths.before, paths.after, paths.index,
                 paths.footage.tracked_manifest, paths.footage.embeddings, paths.footage.index, paths.footage.people):
        assert path.is_file(), path


def test_quick_demo_follows_one_walker_across_the_cameras_of_a_network_and_says_how_it_tracked(
    quick_demo: tuple[DemoPaths, str],
) -> None:
    paths, output = quick_demo
    assert "tracked with --detector gt: the ground truth replayed with a detector's faults" in output
    assert "camera network:" in output and "people (threshold" in output
    result = run_demo(paths.root, quick=True, if_exists="resume")
    footage = result.footage
    walker, person = footage.query_tracklet, footage.person
    assert walker.split == "query" and walker.origin is not None  # one camera's view of one walker
    assert len(footage.true_cameras) > 1 and walker.camid in footage.true_cameras
    assert person is not None and footage.is_followed_across_cameras, footage.result.hits
    assert walker.camid in person.cameras and len(person.cameras) > 1
    assert set(person.cameras) <= set(footage.true_cameras)  # every camera of the timeline saw this walker
    starts = [visit.start_time for visit in person.visits]
    assert starts == sorted(starts) and all(v.end_time > v.start_time for v in person.visits)
    assert f"is person {person.person_id}: {len(person.cameras)} camera(s)" in output
    for visit in person.visits:
        assert f"cam{visit.camid}" in output and visit.tracklet_ids[0] in output


def test_resumed_demo_reuses_every_step_and_the_trained_model_beats_the_untrained_one(
    quick_demo: tuple[DemoPaths, str],
) -> None:
    paths, _ = quick_demo
    kept = (paths.manifest, paths.initial_checkpoint, paths.trained_checkpoint, paths.before, paths.after,
            paths.index, paths.footage.scene_manifest, paths.footage.tracked_manifest, paths.footage.embeddings,
            paths.footage.index, paths.footage.people)
    written = {path: path.stat().st_mtime_ns for path in kept}
    result = run_demo(paths.root, quick=True, if_exists="resume")
    assert {path: path.stat().st_mtime_ns for path in kept} == written
    assert result.training.history == ()  # the finished run was not trained again
    assert result.after.mAP > result.before.mAP + 0.1
    assert result.after.rank5 > result.before.rank5
    assert result.query_tracklet.pid in [hit.pid for hit in result.query.hits]
    assert len(result.query.hits) == 5
    assert result.is_query_found


def test_resume_refuses_a_demo_started_with_the_other_plan(quick_demo: tuple[DemoPaths, str]) -> None:
    paths, _ = quick_demo
    with pytest.raises(UserError, match="holds a quick demo"):
        run_demo(paths.root, quick=False, if_exists="resume")


def test_demo_refuses_a_non_empty_folder_and_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = _invoke("--out", tmp_path, "--quick")
    assert result.exit_code == 2
    assert "is not empty (notes.txt)" in result.output and "--resume" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_force_and_resume_never_touch_a_folder_the_demo_did_not_write(tmp_path: Path, flag: str) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = _invoke("--out", tmp_path, "--quick", flag)
    assert result.exit_code == 2
    assert "holds files the demo did not write (notes.txt)" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_force_and_resume_together_are_refused(tmp_path: Path) -> None:
    result = _invoke("--out", tmp_path / "demo", "--force", "--resume")
    assert result.exit_code == 2
    assert "pass one of them" in result.output
    assert not (tmp_path / "demo").exists()


def _walkers(*seen: tuple[int, int, str, int]) -> Manifest:
    """A camera network's ground-truth manifest: (pid, camid, split, frames) per tracklet."""
    tracklets = [Tracklet(f"{split}/{pid:04d}/{camid}/t00", pid, camid, split, frames,
                          frames=tuple(f"/x/{i}.jpg" for i in range(frames))) for pid, camid, split, frames in seen]
    return manifest_from_tracklets(tracklets, ManifestInfo("synthetic", "gallery_only", "/x"))


def test_the_walker_followed_is_the_one_seen_by_the_most_cameras_then_the_longest_query():
    network = _walkers((1, 0, "query", 30), (1, 1, "gallery", 20),  # two cameras, the longest query
                       (2, 1, "query", 12), (2, 0, "gallery", 9), (2, 2, "gallery", 9),  # three cameras
                       (3, 2, "query", 25), (3, 0, "gallery", 9), (3, 1, "gallery", 9),  # three, longer query
                       (4, 2, "gallery", 40))  # seen once: no query
    assert pick_walker(network).tracklet_id == "query/0003/2/t00"
    with pytest.raises(DataError, match="no walker seen twice"):
        pick_walker(_walkers((4, 2, "gallery", 40)))
