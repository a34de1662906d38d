"""The numpy frames of the query side: the resize is PyTorch's antialiased bilinear, the test transform and the test
clips are the torch path's, and crops are resized only where a clip takes them."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tfclip_cli.clips import ClipTransform, DenseClipDataset
from tfclip_cli.frames import (
    FrameTransform,
    crop_clips,
    embed_clip_indices,
    resize_frames,
    resize_weights,
    sample_dense,
    sample_rrs_test,
    stack_crops,
    tracklet_clips,
    tracklet_from_path,
)


@pytest.mark.parametrize("size_in, size_out", [(256, 128), (100, 256), (517, 211), (40, 9), (128, 128), (3, 7)])
def test_resize_weights_are_pytorch_antialiased_bilinear(size_in: int, size_out: int) -> None:
    rows = resize_weights(size_in, size_out)
    assert rows.shape == (size_out, size_in) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-6)
    # each weight matrix is what interpolate does to the identity (one input pixel lit at a time)
    identity = torch.eye(size_in)[None, None]  # [1, 1, in, in]: column j lights input pixel j
    expected = F.interpolate(identity, size=(size_out, size_in), mode="bilinear", antialias=True)[0, 0]
    np.testing.assert_allclose(rows, expected.numpy(), atol=1e-5)  # PyTorch computes its weights in float32


def test_resize_frames_equals_interpolate_on_images() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 75, 41, 3), dtype=np.uint8)
    expected = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(256, 128),
                             mode="bilinear", antialias=True)
    np.testing.assert_allclose(resize_frames(frames, (256, 128)), expected.numpy(), atol=1e-3)


@pytest.mark.parametrize("normalization", ["imagenet", "clip"])
def test_the_numpy_test_transform_is_the_torch_one(normalization: str) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (4, 90, 50, 3), dtype=np.uint8)
    torch_clip = ClipTransform((64, 32), normalization=normalization)(torch.from_numpy(frames).permute(0, 3, 1, 2))
    numpy_clip = FrameTransform((64, 32), normalization=normalization)(frames)
    assert numpy_clip.dtype == np.float32 and numpy_clip.shape == (4, 3, 64, 32)
    np.testing.assert_allclose(numpy_clip, torch_clip.numpy(), atol=1e-5)


def test_tracklet_clips_are_the_dense_dataset_clips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    tracklet = tracklet_from_path(tmp_path)
    torch_clips = DenseClipDataset([tracklet], seq_len=4, transform=ClipTransform((32, 16)))[0].clips
    numpy_clips = tracklet_clips(tracklet, "dense", seq_len=4, transform=FrameTransform((32, 16)))
    assert numpy_clips.shape == (3, 4, 3, 32, 16)  # 11 frames, 4 a clip: [0..3], [4..7], [8, 9, 10, 8]
    np.testing.assert_allclose(numpy_clips, torch_clips.numpy(), atol=1e-5)
    rrs = tracklet_clips(tracklet, "rrs", seq_len=4, transform=FrameTransform((32, 16)))
    np.testing.assert_allclose(rrs[0], numpy_clips.reshape(12, 3, 32, 16)[[0, 3, 6, 9]], atol=1e-6)  # 0, 3, 6, 9


def test_a_clip_resizes_only_the_crops_it_takes() -> None:
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (30 + i, 12, 3), dtype=np.uint8) for i in range(20)]
    taken = sample_rrs_test(20, 8)  # [0, 3, 6, 9, 12, 15, 18, 19]
    sparse = [crop if i in taken else None for i, crop in enumerate(crops)]  # a crop not taken is never touched
    transform = FrameTransform((16, 8))
    clips = crop_clips(sparse, "rrs", seq_len=8, transform=transform)
    assert clips.shape == (1, 8, 3, 16, 8)
    np.testing.assert_allclose(clips[0], transform(stack_crops([crops[i] for i in taken], (16, 8))), atol=1e-6)
    assert embed_clip_indices(20, 8, "rrs") == [taken]
    assert embed_clip_indices(20, 8, "dense") == sample_dense(20, 8)


def test_stack_crops_resizes_each_crop_on_its_own_and_rounds() -> None:
    flat = [np.full((10, 6, 3), value, dtype=np.uint8) for value in (0, 100, 255)]
    stacked = stack_crops(flat + [np.full((4, 4, 3), 7, dtype=np.uint8)], (10, 6))
    assert stacked.dtype == np.uint8 and stacked.shape == (4, 10, 6, 3)
    assert [int(v) for v in stacked[:, 5, 3, 0]] == [0, 100, 255, 7]  # flat crops stay flat after resizing
