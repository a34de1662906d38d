"""The torch-free runtime: clips of many tracklets batched give each tracklet the embedding it gets alone, crops
are embedded as many as the sampling takes, and the backend follows the file."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tfclip_cli.frames import FrameTransform, sample_dense
from tfclip_cli.errors import UserError
from tfclip_cli.runtime import _metadata_props, backend_for, embed_clip_sets, embed_crop_tracklets, read_metadata

SEQ_LEN = 4
SIZE = (8, 4)


class CountingEmbedder:
    """A fixed linear map of each clip [T, 3, H, W] to 5 numbers, remembering the batch sizes it was given."""

    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).normal(size=(SEQ_LEN * 3 * SIZE[0] * SIZE[1], 5)).astype(np.float32)
        self.batches: list[int] = []

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        self.batches.append(len(clips))
        return clips.reshape(len(clips), -1) @ self.weights


def _clip_sets(counts: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(count, SEQ_LEN, 3, *SIZE)).astype(np.float32) for count in counts]


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_batched_clip_sets_give_each_tracklet_its_own_mean_embedding(batch_size: int) -> None:
    clip_sets = _clip_sets([1, 4, 2, 7, 1])
    embed = CountingEmbedder()
    batched = embed_clip_sets(embed, clip_sets, dim=5, batch_size=batch_size)
    alone = np.stack([embed(clips).mean(axis=0) for clips in clip_sets])  # one tracklet at a time
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-5)
    assert embed_clip_sets(embed, [], dim=5).shape == (0, 5)


def test_clip_sets_are_packed_into_batches_of_about_batch_size() -> None:
    embed = CountingEmbedder()
    embed_clip_sets(embed, _clip_sets([1, 4, 2, 7, 1]), dim=5, batch_size=4)
    assert embed.batches == [5, 9, 1]  # tracklets are never split: a batch closes once it holds batch_size clips


@pytest.mark.parametrize("sampling", ["rrs", "dense"])
def test_crops_are_embedded_as_many_as_the_sampling_takes(sampling: str) -> None:
    rng = np.random.default_rng(2)
    lengths = [3, 9, 17]
    tracklets = [[rng.integers(0, 256, (12, 6, 3), dtype=np.uint8) for _ in range(n)] for n in lengths]
    embed = CountingEmbedder()
    vectors = embed_crop_tracklets(embed, tracklets, sampling=sampling, seq_len=SEQ_LEN,
                                   transform=FrameTransform(SIZE), dim=5, batch_size=64)
    clips_per_tracklet = [1 if sampling == "rrs" else len(sample_dense(n, SEQ_LEN)) for n in lengths]
    assert vectors.shape == (3, 5) and embed.batches == [sum(clips_per_tracklet)]  # every tracklet in one batch
    alone = [embed_crop_tracklets(CountingEmbedder(), [crops], sampling=sampling, seq_len=SEQ_LEN,
                                  transform=FrameTransform(SIZE), dim=5) for crops in tracklets]
    np.testing.assert_allclose(vectors, np.concatenate(alone), rtol=1e-5, atol=1e-4)


def test_the_backend_follows_the_file_unless_given() -> None:
    assert backend_for(Path("m.onnx")) == "onnx" and backend_for(Path("M.ONNX")) == "onnx"
    assert backend_for(Path("best.ckpt")) == "torch"
    assert backend_for(Path("best.ckpt"), "onnx") == "onnx" and backend_for(Path("m.onnx"), "torch") == "torch"


def test_metadata_props_are_read_as_onnx_reads_them_whatever_else_the_file_holds(tmp_path: Path) -> None:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [300, 300], np.ones(90000, np.float32))  # a 360 kB field
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300])], [weights])
    model = helper.make_model(graph, producer_name="tfclip test")
    helper.set_model_props(model, {"format": "tfclip-embedding", "note": "ünïcode", "empty": ""})
    onnx.save(model, tmp_path / "m.onnx")
    expected = {prop.key: prop.value for prop in onnx.load(tmp_path / "m.onnx").metadata_props}
    with (tmp_path / "m.onnx").open("rb") as file:
        assert _metadata_props(file) == expected
    with pytest.raises(UserError, match="m.onnx has no tfclip metadata"):  # the format, but no other field
        read_metadata(tmp_path / "m.onnx")


@pytest.mark.parametrize("content", [b"not a model", b"\x08", b"\x72\x05ab", b"\x3a\x7f"])
def test_bytes_that_are_not_onnx_are_one_user_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.onnx").write_bytes(content)
    with pytest.raises(UserError, match="bad.onnx is not a loadable ONNX model"):
        read_metadata(tmp_path / "bad.onnx")
