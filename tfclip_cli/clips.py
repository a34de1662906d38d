"""From tracklets to clip tensors: datasets, training transforms, the P×K sampler, loaders.

Sampling, decoding and the test-time resize and normalisation live in :mod:`tfclip_cli.frames` (numpy, so the query
side runs without torch); this module turns them into tensors and adds training's augmentation. The transforms and
the P×K sampler follow docs/fidelity.md#preprocessing and #datasets-and-sampler, with the differences documented
where they occur.

Randomness is a pure function of ``(seed, epoch, index)``: :class:`ClipDataset` derives a private ``random.Random``
(frame choice) and ``torch.Generator`` (flip, erasing) for every item, and :class:`IdentitySampler` derives one
``random.Random`` per epoch. Neither reads a global RNG, so batches are identical whatever the number of DataLoader
workers or their scheduling, and a run resumed at an epoch boundary sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from typing import Iterator, Literal, Mapping, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tfclip_cli import frames as frame_io
from tfclip_cli.errors import DataError, RecipeError
from tfclip_cli.frames import (
    Normalization,
    normalization_affine,
    resize_weights,
    sample_dense,
    sample_evenly,
    sample_rrs_test,
    sample_rrs_train,
)
from tfclip_cli.tables import Tracklet

logger = logging.getLogger(__name__)

Sampling = Literal["rrs_train", "rrs_test", "evenly"]
SAMPLINGS: tuple[Sampling, ...] = ("rrs_train", "rrs_test", "evenly")

Erasing = Literal["frame", "clip"]
ERASINGS: tuple[Erasing, ...] = ("frame", "clip")
# Random erasing as the reference's RandomSizedEarser (utils/seqtransforms.py L92-138; docs/fidelity.md#preprocessing).
ERASE_AREA = (0.02, 0.2)
ERASE_ASPECT = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100


def read_frames(tracklet: Tracklet, indices: Sequence[int]) -> torch.Tensor:
    """:func:`tfclip_cli.frames.read_frames` as a tensor: uint8 [T, 3, H, W].

    Raises:
        DataError: naming the file, when an index is out of range or a video or image cannot be decoded.
    """
    return torch.from_numpy(frame_io.read_frames(tracklet, indices)).permute(0, 3, 1, 2)


def _uniform(bounds: tuple[float, float], generator: torch.Generator | None) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


def reference_erase_rect(frame_size: tuple[int, int], area: float, aspect: float) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of what the reference's RandomSizedEarser paints for a drawn area and aspect.

    The patch is ``floor(sqrt(area * aspect))`` rows by ``floor(sqrt(area / aspect))`` columns. The reference pastes
    it with the patch's own size as the offset (``frame.paste(I, part1.size)``), so its top-left corner lands at
    (row = its height, column = its width) whatever corner was drawn, and PIL clips it at the bottom and right
    edges. A draw is rejected (None) when the unrounded patch does not fit strictly inside the frame, the only case
    where the reference's corner draw can fail. Reference: utils/seqtransforms.py L92-138;
    docs/fidelity.md#preprocessing. 256x128, area 3276.8, aspect 2 gives (80, 40, 160, 80).
    """
    frame_h, frame_w = frame_size
    height, width = math.sqrt(area * aspect), math.sqrt(area / aspect)
    if height >= frame_h or width >= frame_w:
        return None
    rows, cols = math.floor(height), math.floor(width)
    return rows, cols, min(2 * rows, frame_h), min(2 * cols, frame_w)


class ClipTransform:
    """uint8 [T, 3, H, W] → float32 [T, 3, h, w]: resize, (train) flip and erase, normalise, batched over T.

    Resize and normalisation are the test transform's (:class:`tfclip_cli.frames.FrameTransform`: the same weights,
    applied to tensors): bilinear with antialiasing straight to ``image_size`` (no crop), as PIL's bilinear resize in
    the reference (utils/seqtransforms.py L30-50). Training adds a horizontal flip of the whole clip (p=``flip_p``, as
    the reference) and then random erasing (area 2-20 %, aspect 0.3-3.33, one random solid RGB colour) in one of
    two ways (``erase``):

    - ``frame`` (the reference's RandomSizedEarser, seqtransforms.py L92-138): every frame decides on its own with
      p=``erase_p`` and gets its own rectangle and colour, painted where the reference paints it
      (:func:`reference_erase_rect`: top-left corner at the patch's own height and width, clipped at the edges).
    - ``clip`` (tfclip's choice): with p=``erase_p`` the same rectangle and colour, at a uniformly drawn position,
      cover every frame of the clip, so the occluder stays put as a real one would.

    Randomness comes from the ``generator`` passed to each call (torch's global RNG when None), so a fixed generator
    seed gives a fixed output.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 128),
        *,
        normalization: Normalization = "imagenet",
        is_train: bool = False,
        flip_p: float = 0.5,
        erase_p: float = 0.5,
        erase: Erasing = "frame",
    ) -> None:
        if erase not in ERASINGS:
            raise RecipeError(f"erase {erase!r} is not one of {', '.join(ERASINGS)}")
        if not (0.0 <= flip_p <= 1.0 and 0.0 <= erase_p <= 1.0):
            raise RecipeError(f"flip_p {flip_p} and erase_p {erase_p} must be probabilities in [0, 1]")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.is_train = is_train
        self.flip_p = flip_p
        self.erase_p = erase_p
        self.erase = erase
        scale, shift = normalization_affine(normalization)
        self._scale, self._shift = torch.from_numpy(scale).view(3, 1, 1), torch.from_numpy(shift).view(3, 1, 1)

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[1] == 3, frames.shape
        clip = self._resize(frames.float())
        if self.is_train:
            clip = self._augment(clip, generator)
        return clip.mul_(self._scale).sub_(self._shift)

    def _resize(self, clip: torch.Tensor) -> torch.Tensor:
        """[T, 3, H, W] → [T, 3, h, w] with :func:`tfclip_cli.frames.resize_weights` (width first, as the numpy side)."""
        (height, width), (new_height, new_width) = clip.shape[-2:], self.image_size
        if width != new_width:
            clip = clip @ torch.from_numpy(resize_weights(width, new_width)).T
        if height != new_height:
            clip = torch.from_numpy(resize_weights(height, new_height)) @ clip
        return clip

    def _augment(self, clip: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip the whole clip [T, 3, h, w] (values 0-255), then erase; always draws in the same order."""
        if float(torch.rand((), generator=generator)) < self.flip_p:
            clip = clip.flip(-1)
        if self.erase == "clip":
            return self._erase_clip(clip, generator)
        return self._erase_frames(clip, generator)

    def _erase_clip(self, clip: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One rectangle and colour on every frame of ``clip`` [T, 3, h, w], or none."""
        if float(torch.rand((), generator=generator)) >= self.erase_p:
            return clip
        box = self._erase_box(generator)
        if box is not None:
            top, left, height, width = box
            colour = torch.randint(256, (3, 1, 1), generator=generator).float()
            clip[:, :, top : top + height, left : left + width] = colour
        return clip

    def _erase_frames(self, clip: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Each frame of ``clip`` [T, 3, h, w] erased or not on its own draw, with its own rectangle and colour."""
        for frame in clip:
            if float(torch.rand((), generator=generator)) >= self.erase_p:
                continue
            rect = self._reference_rect(generator)
            if rect is not None:
                top, left, bottom, right = rect
                frame[:, top:bottom, left:right] = torch.randint(256, (3, 1, 1), generator=generator).float()
        return clip

    def _reference_rect(self, generator: torch.Generator | None) -> tuple[int, int, int, int] | None:
        """Area and aspect redrawn until the patch fits, as the reference's loop (capped: a miss is ~never)."""
        frame_area = self.image_size[0] * self.image_size[1]
        for _ in range(ERASE_ATTEMPTS):
            area = _uniform(ERASE_AREA, generator) * frame_area
            rect = reference_erase_rect(self.image_size, area, _uniform(ERASE_ASPECT, generator))
            if rect is not None:
                return rect
        return None

    def _erase_box(self, generator: torch.Generator | None) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of a rectangle that fits the frame, or None when no draw fitted."""
        frame_h, frame_w = self.image_size
        for _ in range(ERASE_ATTEMPTS):
            area = _uniform(ERASE_AREA, generator) * frame_h * frame_w
            aspect = _uniform(ERASE_ASPECT, generator)
            height = int(round(math.sqrt(area * aspect)))
            width = int(round(math.sqrt(area / aspect)))
            if 0 < height < frame_h and 0 < width < frame_w:
                top = _randint(frame_h - height + 1, generator)
                return top, _randint(frame_w - width + 1, generator), height, width
        return None


class ClipSample(NamedTuple):
    """One sampled clip; a DataLoader batch has the same fields with a leading B (tracklet_id becomes a list)."""

    frames: torch.Tensor  # [T, 3, H, W] float32
    label: int
    camid: int
    tracklet_id: str


class TrackletClips(NamedTuple):
    """Every frame of a tracklet as clips [C, T, 3, H, W]; on a decoding failure C is 0 and ``error`` says why."""

    clips: torch.Tensor
    pid: int
    camid: int
    tracklet_id: str
    error: str | None


def _check_tracklets(tracklets: Sequence[Tracklet]) -> None:
    empty = [t.tracklet_id for t in tracklets if t.num_frames < 1]
    if empty:
        raise DataError(f"tracklet(s) without frames: {', '.join(empty[:5])}", hint="run tfclip prepare again")


class ClipDataset(Dataset):
    """One clip of ``seq_len`` frames per tracklet → :class:`ClipSample` (label = ``label_of[pid]``, or pid).

    ``rrs_train`` frame choice and the training transform's flip and erasing come from generators seeded by
    ``(seed, epoch, index)``: the same item of the same epoch is the same tensor in any worker, in any order.
    The epoch lives in shared memory, so :meth:`set_epoch` reaches persistent DataLoader workers too (call it
    before iterating the loader for that epoch).
    """

    def __init__(
        self,
        tracklets: Sequence[Tracklet],
        *,
        seq_len: int,
        sampling: Sampling,
        transform: ClipTransform,
        label_of: Mapping[int, int] | None = None,
        seed: int = 0,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise RecipeError(f"sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")
        self.tracklets = list(tracklets)
        _check_tracklets(self.tracklets)
        if label_of is not None:
            unknown = sorted({t.pid for t in self.tracklets} - set(label_of))
            if unknown:
                raise DataError(f"pid(s) {unknown[:5]} of the tracklets have no entry in the pid → label mapping")
        self.seq_len = seq_len
        self.sampling = sampling
        self.transform = transform
        self.label_of = label_of
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws :meth:`__getitem__` makes (visible to running workers)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> ClipSample:
        tracklet = self.tracklets[index]
        rng = random.Random(f"{self.seed}/{int(self._epoch)}/{index}")
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        indices = self._sample(tracklet.num_frames, rng)
        frames = self.transform(read_frames(tracklet, indices), generator)
        label = tracklet.pid if self.label_of is None else self.label_of[tracklet.pid]
        return ClipSample(frames, label, tracklet.camid, tracklet.tracklet_id)

    def _sample(self, num_frames: int, rng: random.Random) -> list[int]:
        if self.sampling == "rrs_train":
            return sample_rrs_train(num_frames, self.seq_len, rng)
        if self.sampling == "rrs_test":
            return sample_rrs_test(num_frames, self.seq_len)
        return sample_evenly(num_frames, self.seq_len)


class DenseClipDataset(Dataset):
    """All frames of each tracklet as ``seq_len``-frame clips (:func:`sample_dense`) → :class:`TrackletClips`.

    Never raises on unreadable data: the item carries empty clips [0, T, 3, H, W] and the error message, so an
    extraction pass can report and skip it. Clip counts differ between tracklets: load with ``batch_size=None``.
    """

    def __init__(self, tracklets: Sequence[Tracklet], *, seq_len: int, transform: ClipTransform) -> None:
        self.tracklets = list(tracklets)
        self.seq_len = seq_len
        self.transform = transform

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> TrackletClips:
        tracklet = self.tracklets[index]
        try:
            clips, error = self._clips(tracklet), None
        except DataError as exc:
            logger.warning("skipping tracklet %s: %s", tracklet.tracklet_id, exc.message)
            clips, error = torch.empty((0, self.seq_len, 3, *self.transform.image_size)), exc.message
        return TrackletClips(clips, tracklet.pid, tracklet.camid, tracklet.tracklet_id, error)

    def _clips(self, tracklet: Tracklet) -> torch.Tensor:
        """[C, T, 3, H, W]; all frames are decoded and transformed in one batch."""
        if tracklet.num_frames < 1:
            raise DataError(f"{tracklet.source}: tracklet {tracklet.tracklet_id} has no frames")
        clip_indices = sample_dense(tracklet.num_frames, self.seq_len)
        frames = read_frames(tracklet, [i for clip in clip_indices for i in clip])
        return self.transform(frames).unflatten(0, (len(clip_indices), self.seq_len))


class IdentitySampler(Sampler[list[int]]):
    """P×K batches (``num_ids`` identities × ``num_instances`` tracklets), each rank yielding its share.

    Per epoch, as the reference's RandomIdentitySampler (datasets/samplers.py L9-68;
    docs/fidelity.md#datasets-and-sampler): each pid's tracklets are shuffled (drawn with replacement up to K when fewer
    than K) and cut into groups of K, the tail dropped; then P pids are drawn without replacement, each giving its next
    group, until fewer than P pids have groups left. All draws come from ``random.Random(f"{seed}/{epoch}")``, so every
    rank builds the same batches. Rank r takes the r-th of ``world_size`` contiguous parts of each batch: whole
    identities when P is a multiple of ``world_size``. ``len()`` is the exact number of batches of the current epoch,
    equal on every rank.
    """

    def __init__(
        self,
        pids: Sequence[int],
        *,
        num_ids: int = 4,
        num_instances: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if num_ids < 1 or num_instances < 1 or not 0 <= rank < world_size:
            raise RecipeError(
                f"need num_ids, num_instances >= 1 and 0 <= rank < world_size; got {num_ids}, {num_instances}, "
                f"rank {rank}, world_size {world_size}"
            )
        if (num_ids * num_instances) % world_size:
            raise RecipeError(
                f"a batch of {num_ids} ids × {num_instances} instances cannot be split evenly over "
                f"{world_size} processes",
                hint="make num_ids × num_instances a multiple of the number of processes",
            )
        self.indices_of: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.indices_of[int(pid)].append(index)
        if len(self.indices_of) < num_ids:
            raise DataError(f"the training split has {len(self.indices_of)} identities; a batch needs {num_ids}")
        if num_ids % world_size:
            logger.warning("%d ids per batch over %d processes: ranks share identities", num_ids, world_size)
        self.num_ids, self.num_instances, self.seed = num_ids, num_instances, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (call it with the same epoch on every rank)."""
        self.epoch = epoch

    def _groups(self, indices: list[int], rng: random.Random) -> list[list[int]]:
        pool = list(indices) if len(indices) >= self.num_instances else rng.choices(indices, k=self.num_instances)
        rng.shuffle(pool)
        size = self.num_instances
        return [pool[start : start + size] for start in range(0, len(pool) - size + 1, size)]

    def _plan(self, epoch: int) -> list[list[int]]:
        """Every whole batch (P·K dataset indices, K per identity in a row) of one epoch."""
        rng = random.Random(f"{self.seed}/{epoch}")
        groups = {pid: self._groups(indices, rng) for pid, indices in self.indices_of.items()}
        available = list(groups)
        batches = []
        while len(available) >= self.num_ids:
            batch = []
            for pid in rng.sample(available, self.num_ids):
                batch.extend(groups[pid].pop(0))
                if not groups[pid]:
                    available.remove(pid)
            batches.append(batch)
        return batches

    def _batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._plan(self.epoch))
        return self._cached[1]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.num_ids * self.num_instances // self.world_size
        for batch in self._batches():
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return len(self._batches())


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    workers: int = 2,
    shuffle: bool = False,
    device: torch.device | str,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader whose workers decode and transform; persistent workers when ``workers > 0``, pinned memory on CUDA.

    Give either ``batch_size`` (None: items one by one, as :class:`DenseClipDataset` needs) or ``batch_sampler``
    (an :class:`IdentitySampler`). ``seed`` fixes the shuffling order and the workers' base seed; torch itself seeds
    ``random``, numpy and torch in each worker from that base seed plus the worker id, and the datasets above draw
    from their own per-item generators anyway.
    """
    assert batch_size is None or batch_sampler is None, "give batch_size or batch_sampler, not both"
    options = {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.device(device).type == "cuda",
        "generator": torch.Generator().manual_seed(seed),
    }
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **options)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **options)
