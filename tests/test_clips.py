"""Clips: sampling index lists, decoding from videos and frame folders, clip-consistent transforms, the P×K sampler."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tfclip_cli.clips import (
    ClipDataset,
    ClipSample,
    ClipTransform,
    DenseClipDataset,
    IdentitySampler,
    build_loader,
    read_frames,
    reference_erase_rect,
)
from tfclip_cli.frames import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    chunk_indices,
    count_video_frames,
    sample_dense,
    sample_evenly,
    sample_rrs_test,
    sample_rrs_train,
)
from tfclip_cli.errors import DataError, RecipeError
from tfclip_cli.tables import Tracklet

HEIGHT, WIDTH = 64, 32
VIDEO_TOLERANCE = 4  # H.264 of a flat grey frame is within a few levels of the source value


def frame_value(i: int) -> int:
    """Frame i of every test tracklet is filled with grey 10*i, so a decoded value names the frame."""
    return 10 * i


def write_video(path: Path, num_frames: int, width: int = WIDTH) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, HEIGHT, "yuv420p"
        for i in range(num_frames):
            image = np.full((HEIGHT, width, 3), frame_value(i), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_frames(folder: Path, num_frames: int, suffix: str = ".png") -> tuple[str, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_frames):
        path = folder / f"{i:04d}{suffix}"
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), frame_value(i), np.uint8)).save(path)
        paths.append(str(path))
    return tuple(paths)


def video_tracklet(path: Path, num_frames: int, pid: int = 1, camid: int = 0) -> Tracklet:
    return Tracklet(f"v{pid}-{camid}", pid, camid, "train", num_frames, video=str(path))


def frames_tracklet(frames: tuple[str, ...], pid: int = 1, camid: int = 0, name: str = "") -> Tracklet:
    return Tracklet(name or f"f{pid}-{camid}", pid, camid, "train", len(frames), frames=frames)


def decoded_values(frames: torch.Tensor) -> list[int]:
    """The grey value at the centre of each frame of a uint8 [T, 3, H, W] clip."""
    return frames[:, 0, HEIGHT // 2, WIDTH // 2].tolist()


def unnormalised_values(frames: torch.Tensor) -> list[int]:
    """Undo ImageNet normalisation of a float [T, 3, H, W] clip → centre grey value per frame."""
    red = frames[:, 0, HEIGHT // 2, WIDTH // 2]
    return ((red * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).round().int().tolist()


@pytest.fixture(scope="module")
def video_20(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "walk.mp4", 20)


@pytest.fixture(scope="module")
def frames_9(tmp_path_factory) -> tuple[str, ...]:
    return write_frames(tmp_path_factory.mktemp("frames") / "track", 9)


# Sampling -------------------------------------------------------------------------------------------------------


def test_chunks_of_nine_frames_pad_with_the_last_frame() -> None:
    assert chunk_indices(9, 8) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 8], [8, 8], [8, 8], [8, 8]]


def test_chunks_of_a_short_tracklet_repeat_the_last_frame() -> None:
    assert chunk_indices(3, 8) == [[0], [1], [2], [2], [2], [2], [2], [2]]


def test_chunks_of_sixteen_frames_are_pairs() -> None:
    assert chunk_indices(16, 8) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]


def test_chunks_of_seventeen_frames_are_triples_padded_with_sixteen() -> None:
    expected = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14], [15, 16, 16], [16, 16, 16], [16, 16, 16]]
    assert chunk_indices(17, 8) == expected


def test_rrs_test_takes_the_first_frame_of_each_chunk() -> None:
    assert sample_rrs_test(9, 8) == [0, 2, 4, 6, 8, 8, 8, 8]
    assert sample_rrs_test(3, 8) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert sample_rrs_test(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_rrs_test(17, 8) == [0, 3, 6, 9, 12, 15, 16, 16]


def test_rrs_train_draws_one_frame_from_each_chunk() -> None:
    chunks = chunk_indices(17, 8)
    seen = [Counter() for _ in chunks]
    for seed in range(200):
        picked = sample_rrs_train(17, 8, random.Random(seed))
        assert len(picked) == 8
        for s, index in enumerate(picked):
            assert index in chunks[s]
            seen[s][index] += 1
    assert set(seen[0]) == {0, 1, 2}
    assert set(seen[5]) == {15, 16}
    assert set(seen[7]) == {16}


def test_rrs_train_is_deterministic_under_a_seed() -> None:
    first = [sample_rrs_train(40, 8, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert any(sample_rrs_train(40, 8, random.Random(seed)) != first[0] for seed in range(8, 12))


def test_dense_covers_every_frame_and_cycles_the_last_clip() -> None:
    assert sample_dense(26, 8) == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [8, 9, 10, 11, 12, 13, 14, 15],
        [16, 17, 18, 19, 20, 21, 22, 23],
        [24, 25, 24, 25, 24, 25, 24, 25],
    ]
    assert sample_dense(16, 8) == [list(range(8)), list(range(8, 16))]
    assert sample_dense(17, 8) == [list(range(8)), list(range(8, 16)), [16] * 8]
    assert sample_dense(3, 8) == [[0, 1, 2, 0, 1, 2, 0, 1]]
    assert sample_dense(8, 8) == [list(range(8))]


def test_evenly_spreads_indices_over_the_whole_tracklet() -> None:
    assert sample_evenly(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_evenly(20, 8) == [0, 2, 5, 7, 10, 12, 15, 17]
    assert sample_evenly(8, 8) == list(range(8))
    assert sample_evenly(3, 8) == [0, 1, 2, 2, 2, 2, 2, 2]


def test_sampling_rejects_an_empty_tracklet() -> None:
    with pytest.raises(ValueError):
        chunk_indices(0, 8)


# Decoding -------------------------------------------------------------------------------------------------------


def test_read_frames_from_a_video_returns_the_requested_frames_in_order(video_20: Path) -> None:
    frames = read_frames(video_tracklet(video_20, 20), [5, 0, 5, 19, 12])
    assert frames.dtype == torch.uint8 and frames.shape == (5, 3, HEIGHT, WIDTH)
    expected = [50, 0, 50, 190, 120]
    assert all(abs(got - want) <= VIDEO_TOLERANCE for got, want in zip(decoded_values(frames), expected))


@pytest.mark.parametrize("width", [16, 48])
def test_a_video_of_a_width_decord_mishandles_still_decodes_at_its_size(tmp_path: Path, width: int) -> None:
    frames = read_frames(video_tracklet(write_video(tmp_path / "narrow.mp4", 6, width), 6), [4, 1])
    assert frames.shape == (2, 3, HEIGHT, width)
    values = frames[:, 0, HEIGHT // 2, width // 2].tolist()
    assert all(abs(got - want) <= VIDEO_TOLERANCE for got, want in zip(values, [40, 10]))


def test_read_frames_from_a_png_folder_is_exact(frames_9: tuple[str, ...]) -> None:
    frames = read_frames(frames_tracklet(frames_9), sample_rrs_test(9, 8))
    assert frames.dtype == torch.uint8 and frames.shape == (8, 3, HEIGHT, WIDTH)
    assert decoded_values(frames) == [0, 20, 40, 60, 80, 80, 80, 80]


def test_read_frames_from_a_jpeg_folder_has_the_same_layout(tmp_path: Path) -> None:
    frames = read_frames(frames_tracklet(write_frames(tmp_path, 4, ".jpg")), [3, 1])
    assert frames.dtype == torch.uint8 and frames.shape == (2, 3, HEIGHT, WIDTH)
    assert all(abs(got - want) <= 2 for got, want in zip(decoded_values(frames), [30, 10]))


def test_frames_of_another_size_are_resized_to_the_first_frame(tmp_path: Path) -> None:
    paths = write_frames(tmp_path, 2)
    Image.fromarray(np.full((HEIGHT * 2, WIDTH * 2, 3), 200, np.uint8)).save(paths[1])
    frames = read_frames(frames_tracklet(paths), [0, 1])
    assert frames.shape == (2, 3, HEIGHT, WIDTH)
    assert decoded_values(frames) == [0, 200]


def test_count_video_frames(video_20: Path) -> None:
    assert count_video_frames(video_20) == 20


def test_a_corrupt_video_raises_a_data_error_naming_it(tmp_path: Path, video_20: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video_20.read_bytes()[: len(video_20.read_bytes()) // 3])
    with pytest.raises(DataError, match="broken.mp4"):
        read_frames(video_tracklet(broken, 20), [0, 1])
    with pytest.raises(DataError, match="broken.mp4"):
        count_video_frames(broken)


def test_an_unreadable_image_raises_a_data_error_naming_it(tmp_path: Path) -> None:
    paths = write_frames(tmp_path, 3)
    Path(paths[2]).write_bytes(b"not a png")
    with pytest.raises(DataError, match="0002.png"):
        read_frames(frames_tracklet(paths), [0, 2])
    Path(paths[1]).unlink()
    with pytest.raises(DataError, match="0001.png"):
        read_frames(frames_tracklet(paths), [1])


def test_a_frame_beyond_the_video_raises_a_data_error(video_20: Path) -> None:
    with pytest.raises(DataError, match="walk.mp4 has 20 frames"):
        read_frames(video_tracklet(video_20, 30), [25])
    with pytest.raises(DataError, match="has 20 frames"):
        read_frames(video_tracklet(video_20, 20), [20])


# Transforms -----------------------------------------------------------------------------------------------------


def half_black_clip(num_frames: int = 4) -> torch.Tensor:
    """uint8 [T, 3, H, W]: left half 0, right half 255, so a flip is visible."""
    clip = torch.zeros((num_frames, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    clip[..., WIDTH // 2 :] = 255
    return clip


def test_eval_transform_resizes_and_normalises_deterministically() -> None:
    frames = torch.full((2, 3, 64, 32), 128, dtype=torch.uint8)
    transform = ClipTransform((HEIGHT, WIDTH))
    out = transform(frames)
    assert out.dtype == torch.float32 and out.shape == (2, 3, HEIGHT, WIDTH)
    for channel in range(3):
        expected = (128 / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out[:, channel], torch.tensor(expected), atol=1e-5)
    assert torch.equal(out, transform(frames))
    clip_out = ClipTransform((HEIGHT, WIDTH), normalization="clip")(frames)
    assert torch.allclose(clip_out[:, 2], torch.tensor((128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]), atol=1e-5)


def test_eval_transform_never_flips_or_erases() -> None:
    clip = half_black_clip()
    reference = ClipTransform((HEIGHT, WIDTH))(clip)
    for seed in range(20):
        out = ClipTransform((HEIGHT, WIDTH), flip_p=1.0, erase_p=1.0)(clip, torch.Generator().manual_seed(seed))
        assert torch.equal(out, reference)


def test_flip_applies_to_every_frame_of_the_clip_or_to_none() -> None:
    clip = half_black_clip()
    transform = ClipTransform((HEIGHT, WIDTH), is_train=True, erase_p=0.0)
    flipped = []
    for seed in range(40):
        left_is_bright = transform(clip, torch.Generator().manual_seed(seed))[:, 0, 0, 0] > 0
        assert left_is_bright.all() or not left_is_bright.any()
        flipped.append(bool(left_is_bright.all()))
    assert 5 < sum(flipped) < 35


def test_clip_erasing_paints_the_same_rectangle_and_colour_on_every_frame() -> None:
    clip = torch.stack([torch.full((3, 64, 32), 10 * t + 5, dtype=torch.uint8) for t in range(4)])
    plain = ClipTransform((64, 32), is_train=True, flip_p=0.0, erase_p=0.0)(clip)
    transform = ClipTransform((64, 32), is_train=True, flip_p=0.0, erase_p=1.0, erase="clip")
    for seed in range(20):
        out = transform(clip, torch.Generator().manual_seed(seed))
        changed = (out != plain).any(dim=1)  # [T, H, W]
        assert changed.any()
        assert all(torch.equal(changed[0], changed[t]) for t in range(1, 4))
        assert torch.equal(out[0][:, changed[0]], out[3][:, changed[3]])
        rows, cols = changed[0].any(dim=1).sum(), changed[0].any(dim=0).sum()
        assert int(changed[0].sum()) == int(rows * cols)  # one solid rectangle
        assert 0.01 * 64 * 32 <= int(changed[0].sum()) <= 0.25 * 64 * 32


# The reference's RandomSizedEarser (utils/seqtransforms.py L92-138), worked out by hand: the patch is
# floor(sqrt(area * aspect)) rows x floor(sqrt(area / aspect)) columns, pasted with its own size as the offset.
@pytest.mark.parametrize(
    ("area", "aspect", "expected"),
    [
        (0.10 * 256 * 128, 2.0, (80, 40, 160, 80)),  # 80.95 x 40.48 → 80 x 40 at (80, 40)
        (0.15 * 256 * 128, 0.5, (49, 99, 98, 128)),  # 49.57 x 99.15 → 49 x 99 at (49, 99): cut at the right edge
        (0.20 * 256 * 128, 3.3, (147, 44, 256, 88)),  # 147.1 x 44.56 → 147 x 44 at (147, 44): cut at the bottom
        (0.20 * 256 * 128, 0.3, None),  # 44.3 x 147.8: wider than the 128-pixel frame, drawn again
    ],
)
def test_reference_erasing_pastes_the_patch_at_its_own_size(area, aspect, expected) -> None:
    assert reference_erase_rect((256, 128), area, aspect) == expected


def _erased_masks(transform: ClipTransform, clip: torch.Tensor, seeds: range) -> list[torch.Tensor]:
    """Per seed, the [T, H, W] mask of pixels the training transform changed (no flip)."""
    plain = ClipTransform(transform.image_size, is_train=True, flip_p=0.0, erase_p=0.0)(clip)
    return [(transform(clip, torch.Generator().manual_seed(seed)) != plain).any(dim=1) for seed in seeds]


def test_frame_erasing_puts_each_patch_where_the_reference_pastes_it() -> None:
    clip = torch.full((8, 3, HEIGHT, WIDTH), 7, dtype=torch.uint8)
    transform = ClipTransform((HEIGHT, WIDTH), is_train=True, flip_p=0.0, erase_p=1.0)
    for mask in _erased_masks(transform, clip, range(10)):
        for frame in mask:
            rows = torch.nonzero(frame.any(dim=1)).flatten()
            cols = torch.nonzero(frame.any(dim=0)).flatten()
            top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            assert int(frame.sum()) == (bottom - top) * (right - left)  # one solid rectangle
            assert (bottom, right) == (min(2 * top, HEIGHT), min(2 * left, WIDTH))  # corner = its own size


def test_frame_erasing_decides_each_frame_independently_with_its_own_colour() -> None:
    clip = torch.full((8, 3, HEIGHT, WIDTH), 7, dtype=torch.uint8)
    transform = ClipTransform((HEIGHT, WIDTH), is_train=True, flip_p=0.0, erase_p=0.5)
    decisions = torch.stack([mask.flatten(1).any(dim=1) for mask in _erased_masks(transform, clip, range(300))])
    erased_per_clip = decisions.sum(dim=1)  # [300]; independent p=0.5 draws: Binomial(8, 0.5)
    assert 0.45 < decisions.float().mean() < 0.55
    assert (erased_per_clip.bincount(minlength=9)[1:8].sum() / 300) > 0.9  # all-or-none would give 0
    both = (decisions[:, :-1] & decisions[:, 1:]).float().mean()  # neighbours both erased: 0.25 if independent
    assert 0.2 < both < 0.3
    always = ClipTransform((HEIGHT, WIDTH), is_train=True, flip_p=0.0, erase_p=1.0)
    out, mask = always(clip, torch.Generator().manual_seed(0)), _erased_masks(always, clip, range(1))[0]
    colours = {tuple(out[t][:, mask[t]][:, 0].tolist()) for t in range(8)}
    assert len(colours) > 1 and len({tuple(m.flatten().nonzero()[0].tolist()) for m in mask}) > 1


def test_train_transform_is_reproducible_from_its_generator() -> None:
    clip = torch.randint(0, 256, (4, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = ClipTransform((HEIGHT, WIDTH), is_train=True, erase_p=1.0)
    first = transform(clip, torch.Generator().manual_seed(3))
    assert torch.equal(first, transform(clip, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, transform(clip, torch.Generator().manual_seed(4)))


def test_transform_rejects_an_unknown_normalisation() -> None:
    with pytest.raises(RecipeError, match="imagenet, clip"):
        ClipTransform(normalization="openai")  # type: ignore[arg-type]


# Sampler --------------------------------------------------------------------------------------------------------

# 6 identities with 5, 4, 2, 8, 1 and 4 tracklets; dataset index → pid.
SAMPLER_PIDS = [10] * 5 + [11] * 4 + [12] * 2 + [13] * 8 + [14] * 1 + [15] * 4


def test_each_batch_holds_p_distinct_identities_with_k_tracklets_each() -> None:
    sampler = IdentitySampler(SAMPLER_PIDS, num_ids=2, num_instances=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 4
        pids = [SAMPLER_PIDS[i] for i in batch]
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
    # pid 14 has a single tracklet (index 19), drawn with replacement: whenever it is picked, both instances are it
    single = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        single += [batch[k : k + 2] for batch in sampler for k in (0, 2) if 19 in batch[k : k + 2]]
    assert single and all(group == [19, 19] for group in single)


def test_sampler_is_deterministic_and_epochs_differ() -> None:
    def epoch_batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = IdentitySampler(SAMPLER_PIDS, num_ids=2, num_instances=2, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 0) == epoch_batches(0, 0)
    assert epoch_batches(0, 3) == epoch_batches(0, 3)
    assert epoch_batches(0, 0) != epoch_batches(0, 1)
    assert epoch_batches(0, 0) != epoch_batches(1, 0)


def test_sampler_draws_each_group_of_k_at_most_once_per_epoch() -> None:
    sampler = IdentitySampler(SAMPLER_PIDS, num_ids=2, num_instances=2, seed=5)
    used = [i for batch in sampler for i in batch if SAMPLER_PIDS[i] != 14]
    assert len(used) == len(set(used))
    # per pid at most max(n, K) // K groups: 2, 2, 1, 4, 1, 2
    groups = Counter(SAMPLER_PIDS[batch[k]] for batch in sampler for k in (0, 2))
    limits = {10: 2, 11: 2, 12: 1, 13: 4, 14: 1, 15: 2}
    assert all(groups[pid] <= limits[pid] for pid in groups)


def test_ranks_get_disjoint_whole_identity_shares_of_the_same_batches() -> None:
    full = IdentitySampler(SAMPLER_PIDS, num_ids=4, num_instances=2, seed=2)
    ranks = [IdentitySampler(SAMPLER_PIDS, num_ids=4, num_instances=2, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for sampler in (full, *ranks):
        sampler.set_epoch(1)
    assert len(ranks[0]) == len(ranks[1]) == len(full)
    for batch, share0, share1 in zip(full, *ranks):
        assert share0 + share1 == batch
        assert len(share0) == len(share1) == 4
        assert {SAMPLER_PIDS[i] for i in share0}.isdisjoint({SAMPLER_PIDS[i] for i in share1})


def test_sampler_rejects_impossible_batches() -> None:
    with pytest.raises(RecipeError, match="cannot be split evenly"):
        IdentitySampler(SAMPLER_PIDS, num_ids=3, num_instances=1, world_size=2)
    with pytest.raises(DataError, match="has 6 identities; a batch needs 8"):
        IdentitySampler(SAMPLER_PIDS, num_ids=8, num_instances=2)


# Datasets and loader --------------------------------------------------------------------------------------------


def test_clip_dataset_rrs_test_returns_the_chunk_starts(frames_9: tuple[str, ...]) -> None:
    dataset = ClipDataset(
        [frames_tracklet(frames_9, pid=7, camid=2)],
        seq_len=8,
        sampling="rrs_test",
        transform=ClipTransform((HEIGHT, WIDTH)),
        label_of={7: 0},
    )
    sample = dataset[0]
    assert isinstance(sample, ClipSample)
    assert sample.frames.shape == (8, 3, HEIGHT, WIDTH) and sample.frames.dtype == torch.float32
    assert unnormalised_values(sample.frames) == [0, 20, 40, 60, 80, 80, 80, 80]
    assert (sample.label, sample.camid, sample.tracklet_id) == (0, 2, "f7-2")


def test_clip_dataset_rrs_train_depends_only_on_seed_epoch_and_index(tmp_path: Path) -> None:
    tracklets = [frames_tracklet(write_frames(tmp_path / f"t{i}", 17), pid=i, name=f"t{i}") for i in range(2)]

    def frames_of(seed: int, epoch: int, index: int) -> list[int]:
        transform = ClipTransform((HEIGHT, WIDTH))
        dataset = ClipDataset(tracklets, seq_len=8, sampling="rrs_train", transform=transform, seed=seed)
        dataset.set_epoch(epoch)
        return unnormalised_values(dataset[index].frames)

    first = frames_of(0, 0, 1)
    assert all(value // 10 in chunk for value, chunk in zip(first, chunk_indices(17, 8)))
    assert first == frames_of(0, 0, 1)
    assert first != frames_of(0, 1, 1)
    assert first != frames_of(1, 0, 1)
    assert frames_of(0, 0, 0) != first


def test_clip_dataset_evenly_and_pid_labels(video_20: Path) -> None:
    dataset = ClipDataset(
        [video_tracklet(video_20, 20, pid=3)], seq_len=4, sampling="evenly", transform=ClipTransform((HEIGHT, WIDTH))
    )
    sample = dataset[0]
    assert sample.label == 3
    values = unnormalised_values(sample.frames)
    assert all(abs(got - want) <= VIDEO_TOLERANCE + 1 for got, want in zip(values, [0, 50, 100, 150]))


def test_clip_dataset_rejects_unknown_pids_and_sampling(frames_9: tuple[str, ...]) -> None:
    tracklets, transform = [frames_tracklet(frames_9, pid=7)], ClipTransform((HEIGHT, WIDTH))
    with pytest.raises(DataError, match="pid"):
        ClipDataset(tracklets, seq_len=8, sampling="rrs_test", transform=transform, label_of={})
    with pytest.raises(RecipeError, match="rrs_train, rrs_test, evenly"):
        ClipDataset(tracklets, seq_len=8, sampling="dense", transform=transform)  # type: ignore[arg-type]


def test_dense_dataset_returns_all_clips_and_reports_unreadable_tracklets(tmp_path: Path, video_20: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    dataset = DenseClipDataset(
        [video_tracklet(video_20, 20, pid=4, camid=1), video_tracklet(broken, 20, pid=5)],
        seq_len=8,
        transform=ClipTransform((HEIGHT, WIDTH)),
    )
    good, bad = dataset[0], dataset[1]
    assert good.clips.shape == (3, 8, 3, HEIGHT, WIDTH) and good.error is None
    assert (good.pid, good.camid, good.tracklet_id) == (4, 1, "v4-1")
    last_clip = unnormalised_values(good.clips[2])
    expected = [160, 170, 180, 190, 160, 170, 180, 190]
    assert all(abs(got - want) <= VIDEO_TOLERANCE + 1 for got, want in zip(last_clip, expected))
    assert bad.clips.shape == (0, 8, 3, HEIGHT, WIDTH)
    assert "broken.mp4" in bad.error


def test_loader_with_two_workers_gives_the_same_batches_as_the_main_process(tmp_path: Path, video_20: Path) -> None:
    pids = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    tracklets = [video_tracklet(video_20, 20, pid=0)] + [
        frames_tracklet(write_frames(tmp_path / f"t{i}", 12), pid=pid, name=f"t{i}") for i, pid in enumerate(pids)
    ]
    transform = ClipTransform((HEIGHT, WIDTH), is_train=True)

    def two_epochs(workers: int) -> list[ClipSample]:
        dataset = ClipDataset(tracklets, seq_len=4, sampling="rrs_train", transform=transform, seed=3)
        sampler = IdentitySampler([t.pid for t in tracklets], num_ids=2, num_instances=2, seed=3)
        loader = build_loader(dataset, batch_sampler=sampler, workers=workers, device="cpu")
        assert loader.persistent_workers == (workers > 0) and not loader.pin_memory
        batches = []
        for epoch in range(2):
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            batches.extend(loader)
        return batches

    in_process, in_workers = two_epochs(0), two_epochs(2)
    assert len(in_process) == len(in_workers) >= 4
    for a, b in zip(in_process, in_workers):
        assert a.frames.shape == (4, 4, 3, HEIGHT, WIDTH)
        assert torch.equal(a.frames, b.frames) and torch.equal(a.label, b.label)
        assert a.tracklet_id == b.tracklet_id


def test_loader_yields_dense_items_one_by_one(video_20: Path) -> None:
    dataset = DenseClipDataset([video_tracklet(video_20, 20)], seq_len=8, transform=ClipTransform((HEIGHT, WIDTH)))
    items = list(build_loader(dataset, workers=0, device="cpu"))
    assert len(items) == 1 and items[0].clips.shape == (3, 8, 3, HEIGHT, WIDTH) and items[0].pid == 1


# What users' files can do (issue 13) ------------------------------------------------------------------------------


def test_a_data_error_in_a_dataloader_worker_is_the_one_line_naming_the_file(tmp_path: Path) -> None:
    paths = write_frames(tmp_path / "track", 4)
    Path(paths[2]).write_bytes(b"not a png")
    dataset = ClipDataset([frames_tracklet(paths)], seq_len=4, sampling="rrs_test", transform=ClipTransform((64, 32)))
    loader = build_loader(dataset, batch_size=1, workers=1, device="cpu")
    with pytest.raises(DataError) as raised:
        next(iter(loader))
    message = raised.value.message
    assert message.startswith(f"{paths[2]}: cannot read the frame image")
    assert "\n" not in message and "Traceback" not in message and "worker" not in message


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header says ``width`` x ``height`` (as a 315 KB PNG of 10,000 x 10,000 pixels would)."""
    import struct
    import zlib

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    return path


def test_a_frame_above_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _png_claiming_size(tmp_path / "huge.png", 10_000, 10_000)
    with pytest.raises(DataError, match=r"huge.png: a frame of 10000x10000 pixels \(100 MP\) is above the limit"):
        read_frames(frames_tracklet((str(path),)), [0])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_large_frame_is_decoded_at_a_reduced_size_with_the_same_content(tmp_path: Path, suffix: str) -> None:
    image = np.zeros((3000, 4500, 3), np.uint8)
    image[:, :2250] = (200, 40, 40)  # left half red, right half black
    path = tmp_path / f"large{suffix}"
    Image.fromarray(image).save(path)
    frames = read_frames(frames_tracklet((str(path),)), [0])
    height, width = frames.shape[-2:]
    assert 1024 <= max(height, width) < 2048 and abs(width / height - 1.5) < 0.01
    assert frames.dtype == torch.uint8
    assert abs(int(frames[0, 0, height // 2, width // 4]) - 200) <= 3
    assert int(frames[0, 0, height // 2, 3 * width // 4]) <= 3
