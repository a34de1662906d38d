"""From tracklets to clip tensors: frame-index sampling, decoding, transforms, datasets, loaders.

The only module that imports decord (and the one that decodes frames). Sampling reproduces the official TF-CLIP code
(docs/fidelity.md#temporal-sampling); the transforms and the P×K sampler follow docs/fidelity.md#preprocessing and
#datasets-and-sampler, with the differences documented where they occur.

Randomness is a pure function of ``(seed, epoch, index)``: :class:`ClipDataset` derives a private ``random.Random``
(frame choice) and ``torch.Generator`` (flip, erasing) for every item, and :class:`IdentitySampler` derives one
``random.Random`` per epoch. Neither reads a global RNG, so batches are identical whatever the number of DataLoader
workers or their scheduling, and a run resumed at an epoch boundary sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Literal, Mapping, NamedTuple, Sequence

import av
import decord
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from tfclip_cli.errors import DataError, RecipeError
from tfclip_cli.tables import Tracklet

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Normalization = Literal["imagenet", "clip"]
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}
Sampling = Literal["rrs_train", "rrs_test", "evenly"]
SAMPLINGS: tuple[Sampling, ...] = ("rrs_train", "rrs_test", "evenly")

Erasing = Literal["frame", "clip"]
ERASINGS: tuple[Erasing, ...] = ("frame", "clip")
# Random erasing as the reference's RandomSizedEarser (utils/seqtransforms.py L92-138; docs/fidelity.md#preprocessing).
ERASE_AREA = (0.02, 0.2)
ERASE_ASPECT = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100


def _check_lengths(num_frames: int, seq_len: int) -> None:
    if num_frames < 1 or seq_len < 1:
        raise ValueError(f"need num_frames >= 1 and seq_len >= 1, got {num_frames} and {seq_len}")


def chunk_indices(num_frames: int, seq_len: int) -> list[list[int]]:
    """Split frame indices 0..num_frames-1 into ``seq_len`` chunks for restricted random sampling.

    With fewer frames than ``seq_len``, chunk s is ``[min(s, num_frames - 1)]``. Otherwise ``k = ceil(n / seq_len)``,
    the index list is padded with the last index to ``k * seq_len`` and chunk s is ``[k*s, k*(s+1))``: 9 frames give
    {0,1},{2,3},{4,5},{6,7},{8,8},{8,8},{8,8},{8,8}. Reference: datasets/video_loader_xh.py L36-48;
    docs/fidelity.md#temporal-sampling.
    """
    _check_lengths(num_frames, seq_len)
    if num_frames < seq_len:
        return [[min(s, num_frames - 1)] for s in range(seq_len)]
    width = math.ceil(num_frames / seq_len)
    strip = list(range(num_frames)) + [num_frames - 1] * (width * seq_len - num_frames)
    return [strip[width * s : width * (s + 1)] for s in range(seq_len)]


def sample_rrs_train(num_frames: int, seq_len: int, rng: random.Random) -> list[int]:
    """One uniformly drawn position of each chunk (padding included, as the reference; video_loader_xh.py L125-142)."""
    return [chunk[rng.randrange(len(chunk))] for chunk in chunk_indices(num_frames, seq_len)]


def sample_rrs_test(num_frames: int, seq_len: int) -> list[int]:
    """The first index of each chunk: 9 frames give [0, 2, 4, 6, 8, 8, 8, 8] (video_loader_xh.py L144-157)."""
    return [chunk[0] for chunk in chunk_indices(num_frames, seq_len)]


def sample_dense(num_frames: int, seq_len: int) -> list[list[int]]:
    """Every frame, as consecutive non-overlapping clips; the last clip cycles its own frames up to ``seq_len``.

    26 frames, seq_len 8: [0..7], [8..15], [16..23], [24, 25, 24, 25, 24, 25, 24, 25]. A clip is only started
    while more than ``seq_len`` frames remain, so 16 frames give two clips. Reference: video_loader_xh.py L86-123.
    """
    _check_lengths(num_frames, seq_len)
    clips = [list(range(start, start + seq_len)) for start in range(0, num_frames - seq_len, seq_len)]
    rest = list(range(len(clips) * seq_len, num_frames))
    return clips + [[rest[i % len(rest)] for i in range(seq_len)]]


def sample_evenly(num_frames: int, seq_len: int) -> list[int]:
    """``seq_len`` indices spread over the whole tracklet (``i * n // seq_len``); shorter tracklets repeat the last.

    The reference lists `evenly` but never implements it; torchreid's version drops the ``n % seq_len`` tail frames,
    this one spans them too (the two agree when seq_len divides n).
    """
    _check_lengths(num_frames, seq_len)
    if num_frames < seq_len:
        return [min(s, num_frames - 1) for s in range(seq_len)]
    return [s * num_frames // seq_len for s in range(seq_len)]


decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's "moov atom not found" would print before our error line


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what C code writes to file descriptor 2 during the block to /dev/null: decord logs "ERROR opening ..."
    there before raising the error that we report as one line."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def count_video_frames(path: str | Path) -> int:
    """The number of frames decord sees in a video file.

    Raises:
        DataError: when the file cannot be opened as a video.
    """
    return len(_open_video(str(path)))


def _open_video(path: str, **size: int) -> decord.VideoReader:
    try:
        with _native_stderr_silenced():
            return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **size)
    except Exception as exc:
        raise DataError(f"{path}: cannot open the video ({exc}); expected a readable video file") from exc


def _read_video(path: str, frames: list[int]) -> torch.Tensor:
    """Decode the sorted distinct ``frames`` of a video by random access → uint8 [U, 3, H, W].

    The reader is local, so its decoder and file handle are released when the call returns: a worker touching
    thousands of videos never accumulates open readers.
    """
    reader = _open_video(path)
    if frames[-1] >= len(reader):
        raise DataError(
            f"{path} has {len(reader)} frames but frame {frames[-1]} was requested",
            hint="the manifest's num_frames no longer matches the file; run tfclip prepare again",
        )
    try:
        batch = reader.get_batch(frames).asnumpy()
    except Exception as exc:
        return _read_video_at_padded_width(path, frames, exc)
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def _read_video_at_padded_width(path: str, frames: list[int], error: Exception) -> torch.Tensor:
    """Retry a failed decord decode at a width rounded up to a multiple of 32, then resize back → [U, 3, H, W].

    decord 0.6.0 fails on some narrow widths (8, 12, 16, 24, 48 and 72 pixels seen) with "The size must exactly
    match": its RGB copy expects padded rows. A video that fails here too is unreadable.
    """
    try:
        with av.open(path) as container:
            stream = container.streams.video[0].codec_context
            height, width = stream.height, stream.width
        reader = _open_video(path, width=32 * math.ceil(width / 32), height=height)
        batch = torch.from_numpy(reader.get_batch(frames).asnumpy()).permute(0, 3, 1, 2)
    except Exception as exc:
        raise DataError(f"{path}: cannot decode video frames {frames[0]}..{frames[-1]} ({error})") from exc
    return _resize_uint8(batch, (height, width))


MAX_FRAME_PIXELS = 50_000_000
"""Largest frame image accepted (50 MP, above any camera's 8K frame): a bigger one is refused before decoding."""
DECODE_SIDE = 1024
"""Images with a longer side of at least twice this are decoded at an integer fraction of their size (JPEG draft,
else Pillow's reduce), in uint8: a 10,000-pixel frame would otherwise cost gigabytes as a float tensor."""


def _decode_image(path: str) -> torch.Tensor:
    """One frame image → uint8 [3, H, W] RGB, through Pillow (libjpeg-turbo); huge images at a reduced size.

    Not torchvision.io: its decoders are deprecated since torchvision 0.29 (a warning per call), only ~15 % faster
    on 256×128 JPEGs here, and its bundled libpng rejects some valid PNGs ("bad parameters to zlib").
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below says more
            image = Image.open(path)
        with image:
            _check_pixels(image, path)
            reduced = _reduce(image)
            pixels = np.array(reduced if reduced.mode == "RGB" else reduced.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read the frame image ({exc}); expected a readable JPEG or PNG") from exc
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _check_pixels(image: Image.Image, path: str) -> None:
    width, height = image.size
    if width * height > MAX_FRAME_PIXELS:
        raise DataError(
            f"{path}: a frame of {width}x{height} pixels ({width * height / 1e6:.0f} MP) is above the limit of "
            f"{MAX_FRAME_PIXELS / 1e6:.0f} MP",
            hint="crop or shrink the image: a person crop needs a few hundred pixels",
        )


def _reduce(image: Image.Image) -> Image.Image:
    """``image``, shrunk by an integer factor while its longer side stays at least DECODE_SIDE (same for its frames:
    a tracklet's frames are then resized to the first one's size)."""
    factor = max(image.size) // DECODE_SIDE
    if factor < 2:
        return image
    target = (image.size[0] // factor, image.size[1] // factor)
    if image.format == "JPEG":
        image.draft("RGB", target)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly
    factor = max(image.size) // DECODE_SIDE
    return image.reduce(factor) if factor >= 2 else image


def _resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [N, 3, H, W] → uint8 [N, 3, *size], bilinear with antialiasing."""
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def stack_crops(crops: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """RGB crops ``[h, w, 3]`` uint8 of any sizes (a person cut out of footage, in memory) → uint8
    ``[N, 3, *size]``, each resized on its own (bilinear, antialiased) as :class:`ClipTransform` resizes frames."""
    return torch.cat([_resize_uint8(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None], size)
                      for crop in crops])


def _read_images(paths: list[str]) -> torch.Tensor:
    """Decode frame images → uint8 [U, 3, H, W]; images of another size are resized to the first one's."""
    images = [_decode_image(path) for path in paths]
    size = tuple(images[0].shape[-2:])
    return torch.stack([image if image.shape[-2:] == size else _resize_uint8(image[None], size)[0] for image in images])


def read_frames(tracklet: Tracklet, indices: Sequence[int]) -> torch.Tensor:
    """Decode the frames ``indices`` of a tracklet, in that order and with repeats, as uint8 [T, 3, H, W].

    Each distinct frame is decoded once: a video through decord's random access to just those frames (never the
    whole video), a frame folder through Pillow. Both give the same layout.

    Raises:
        DataError: naming the file, when an index is out of range or a video or image cannot be decoded.
    """
    assert len(indices) > 0, "read_frames needs at least one index"
    distinct = sorted(set(indices))
    outside = [i for i in distinct if not 0 <= i < tracklet.num_frames]
    if outside:
        raise DataError(
            f"{tracklet.source}: frame {outside[0]} requested from tracklet {tracklet.tracklet_id}, "
            f"which has {tracklet.num_frames} frames"
        )
    if tracklet.is_video:
        decoded = _read_video(tracklet.video, distinct)
    else:
        decoded = _read_images([tracklet.frames[i] for i in distinct])
    row_of = {frame: row for row, frame in enumerate(distinct)}
    return decoded[[row_of[i] for i in indices]]


def read_key_frames(tracklet: Tracklet) -> np.ndarray:
    """The first, middle and last frame of ``tracklet`` as uint8 ``[K, H, W, 3]`` (K ≤ 3 for short tracklets).

    Raises:
        DataError: naming the file when a frame cannot be decoded.
    """
    last = tracklet.num_frames - 1
    frames = read_frames(tracklet, sorted({0, last // 2, last}))  # [K, 3, H, W]
    return frames.permute(0, 2, 3, 1).numpy()


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

    Resize is bilinear with antialiasing straight to ``image_size`` (no crop), as PIL's bilinear resize in the
    reference (utils/seqtransforms.py L30-50). Training adds a horizontal flip of the whole clip (p=``flip_p``, as
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
        if normalization not in NORMALIZATIONS:
            raise RecipeError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
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
        mean, std = (torch.tensor(values).view(3, 1, 1) for values in NORMALIZATIONS[normalization])
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[1] == 3, frames.shape
        clip = frames.float()
        if tuple(clip.shape[-2:]) != self.image_size:
            clip = F.interpolate(clip, size=self.image_size, mode="bilinear", antialias=True)
        if self.is_train:
            clip = self._augment(clip, generator)
        return clip.mul_(self._scale).sub_(self._shift)

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
