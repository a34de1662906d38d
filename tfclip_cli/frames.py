"""Frames without torch: frame-index sampling, decoding, the test-time transform, person crops, query clips.

The one module that imports decord. Everything here is numpy, so the query side (``tfclip query -c M.onnx``, a
served gallery with an exported model) reads, samples and transforms clips without importing torch; the training
and extraction side (:mod:`tfclip_cli.clips`) decodes through this module and resizes with the same weights
(:func:`resize_weights`), so both sides feed a model the same numbers.

Sampling reproduces the official TF-CLIP code (docs/fidelity.md#temporal-sampling). Resizing is bilinear with
antialiasing, PyTorch's ``interpolate(..., mode="bilinear", antialias=True)`` (which is Pillow's bilinear filter,
the reference's resize: utils/seqtransforms.py L30-50) written as one weight matrix per axis.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import warnings
from pathlib import Path
from typing import Iterator, Literal, Sequence

import av  # noqa: F401  (before decord: see below)
import decord
import numpy as np
from PIL import Image

from tfclip_cli.errors import DataError, RecipeError
from tfclip_cli.tables import NON_UTF8_REASON, Split, Tracklet, is_utf8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Normalization = Literal["imagenet", "clip"]
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}
EmbedSampling = Literal["dense", "rrs"]
"""How a tracklet becomes test clips: ``dense`` every frame in consecutive clips, ``rrs`` one ``rrs_test`` clip."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# ---------------------------------------------------------------------------------------------------- sampling


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


def embed_clip_indices(num_frames: int, seq_len: int, sampling: EmbedSampling) -> list[list[int]]:
    """The frame indices of a tracklet's test clips: every dense clip, or the one ``rrs_test`` clip."""
    if sampling == "dense":
        return sample_dense(num_frames, seq_len)
    return [sample_rrs_test(num_frames, seq_len)]


# -------------------------------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=64)
def resize_weights(size_in: int, size_out: int) -> np.ndarray:
    """The ``[size_out, size_in]`` float32 matrix of a bilinear antialiased resize along one axis.

    PyTorch's antialiased bilinear (``_upsample_bilinear2d_aa``, itself Pillow's ``ImagingResample``): output pixel
    i is centred at ``scale * (i + 0.5)`` (``scale = size_in / size_out``); a triangle filter stretched by the scale
    when shrinking (support ``scale``, else 1) weighs the input pixels within the support, normalised to sum 1.
    """
    scale = size_in / size_out
    support = scale if scale >= 1.0 else 1.0
    stretch = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        centre = scale * (i + 0.5)
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), size_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(low, high) - centre + 0.5) * stretch))
        weights[i, low:high] = taps / taps.sum()
    return weights.astype(np.float32)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 or float frames ``[N, H, W, 3]`` → float32 ``[N, 3, h, w]`` (channels first, values kept 0-255)."""
    count, height, width, channels = frames.shape
    pixels = np.ascontiguousarray(frames.transpose(0, 1, 3, 2), dtype=np.float32)  # [N, H, 3, W]
    if width != size[1]:
        pixels = pixels @ resize_weights(width, size[1]).T  # [N, H, 3, w]
    if height != size[0]:
        pixels = (resize_weights(height, size[0]) @ pixels.reshape(count, height, -1))  # [N, h, 3 * w]
    return pixels.reshape(count, size[0], channels, size[1]).transpose(0, 2, 1, 3)


def resize_uint8(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` → uint8 ``[N, *size, 3]``, bilinear with antialiasing, rounded."""
    resized = resize_frames(frames, size).transpose(0, 2, 3, 1)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def stack_crops(crops: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """RGB crops ``[h, w, 3]`` uint8 of any sizes (a person cut out of footage, in memory) → uint8
    ``[N, *size, 3]``, each resized on its own (bilinear, antialiased) as :class:`FrameTransform` resizes frames."""
    return np.concatenate([crop[None] if crop.shape[:2] == tuple(size) else resize_uint8(crop[None], size)
                           for crop in crops])


def normalization_affine(normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each float32 ``[3]``: ``pixel * scale - shift`` is ``(pixel / 255 - mean) / std``.

    Raises:
        RecipeError: for an unknown normalisation name.
    """
    if normalization not in NORMALIZATIONS:
        raise RecipeError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    mean, std = (np.asarray(values, dtype=np.float32) for values in NORMALIZATIONS[normalization])
    return 1.0 / (255.0 * std), mean / std


class FrameTransform:
    """The test transform: uint8 frames ``[T, H, W, 3]`` → float32 ``[T, 3, h, w]``, resized straight to
    ``image_size`` (no crop) and normalised. :class:`tfclip_cli.clips.ClipTransform` adds training's augmentation
    on the same resize and normalisation.

    Raises:
        RecipeError: for an unknown normalisation name.
    """

    def __init__(self, image_size: tuple[int, int], *, normalization: Normalization = "imagenet") -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        scale, shift = normalization_affine(normalization)
        self._scale, self._shift = scale.reshape(3, 1, 1), shift.reshape(3, 1, 1)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3, frames.shape
        clip = resize_frames(frames, self.image_size)
        return clip * self._scale - self._shift


# -------------------------------------------------------------------------------------------------- decoding


# PyAV is imported first on purpose: decord's wheel carries an older libvpx whose symbols, once loaded, are the ones
# PyAV's own FFmpeg binds to, and then opening the VP9 encoder fails with EINVAL (`track --annotate OUT.webm` in a
# process that had decoded with decord). Loaded first, PyAV binds to its own.
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


def _read_video(path: str, frames: list[int]) -> np.ndarray:
    """Decode the sorted distinct ``frames`` of a video by random access → uint8 [U, H, W, 3].

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
        return reader.get_batch(frames).asnumpy()
    except Exception as exc:
        return _read_video_at_padded_width(path, frames, exc)


def _read_video_at_padded_width(path: str, frames: list[int], error: Exception) -> np.ndarray:
    """Retry a failed decord decode at a width rounded up to a multiple of 32, then resize back → [U, H, W, 3].

    decord 0.6.0 fails on some narrow widths (8, 12, 16, 24, 48 and 72 pixels seen) with "The size must exactly
    match": its RGB copy expects padded rows. A video that fails here too is unreadable.
    """
    import av  # PyAV, only for this rare retry: a query reads most videos without it

    try:
        with av.open(path) as container:
            stream = container.streams.video[0].codec_context
            height, width = stream.height, stream.width
        reader = _open_video(path, width=32 * math.ceil(width / 32), height=height)
        batch = reader.get_batch(frames).asnumpy()
    except Exception as exc:
        raise DataError(f"{path}: cannot decode video frames {frames[0]}..{frames[-1]} ({error})") from exc
    return resize_uint8(batch, (height, width))


MAX_FRAME_PIXELS = 50_000_000
"""Largest frame image accepted (50 MP, above any camera's 8K frame): a bigger one is refused before decoding."""
DECODE_SIDE = 1024
"""Images with a longer side of at least twice this are decoded at an integer fraction of their size (JPEG draft,
else Pillow's reduce), in uint8: a 10,000-pixel frame would otherwise cost gigabytes as a float array."""


def _decode_image(path: str) -> np.ndarray:
    """One frame image → uint8 [H, W, 3] RGB, through Pillow (libjpeg-turbo); huge images at a reduced size.

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
            return np.array(reduced if reduced.mode == "RGB" else reduced.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read the frame image ({exc}); expected a readable JPEG or PNG") from exc


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


def _read_images(paths: list[str]) -> np.ndarray:
    """Decode frame images → uint8 [U, H, W, 3]; images of another size are resized to the first one's."""
    images = [_decode_image(path) for path in paths]
    size = images[0].shape[:2]
    return np.stack([image if image.shape[:2] == size else resize_uint8(image[None], size)[0] for image in images])


def read_frames(tracklet: Tracklet, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames ``indices`` of a tracklet, in that order and with repeats, as uint8 [T, H, W, 3].

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
    return read_frames(tracklet, sorted({0, last // 2, last}))


def tracklet_from_path(path: Path, *, camid: int = -1, split: Split = "query") -> Tracklet:
    """A Tracklet of unknown identity (pid -1) from a video file or a folder of frame images (sorted by name).

    Args:
        camid: the camera, or -1 when unknown.

    Raises:
        DataError: when the path is missing, is a folder without images, or a video that cannot be opened.
    """
    path = Path(path).resolve()
    if not is_utf8(str(path)):  # decord opens only UTF-8 names
        raise DataError(f"{path}: {NON_UTF8_REASON}")
    if path.is_dir():
        frames = tuple(str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise DataError(f"{path} holds no frame images ({', '.join(IMAGE_SUFFIXES)}); expected a tracklet folder")
        return Tracklet(str(path), pid=-1, camid=camid, split=split, num_frames=len(frames), frames=frames)
    if not path.is_file():
        raise DataError(f"{path} not found: expected a video file or a folder of frames")
    return Tracklet(str(path), pid=-1, camid=camid, split=split, num_frames=count_video_frames(path), video=str(path))


# ------------------------------------------------------------------------------------------------ test clips


def tracklet_clips(tracklet: Tracklet, sampling: EmbedSampling, *, seq_len: int, transform: FrameTransform
                   ) -> np.ndarray:
    """A tracklet's test clips float32 ``[C, T, 3, h, w]`` (:func:`embed_clip_indices`); each frame used is decoded
    and transformed once.

    Raises:
        DataError: naming the file when a frame cannot be decoded, or the tracklet has no frames.
    """
    if tracklet.num_frames < 1:
        raise DataError(f"{tracklet.source}: tracklet {tracklet.tracklet_id} has no frames")
    return _clips_of(embed_clip_indices(tracklet.num_frames, seq_len, sampling),
                     lambda distinct: transform(read_frames(tracklet, distinct)))


def crop_clips(crops: Sequence[np.ndarray], sampling: EmbedSampling, *, seq_len: int, transform: FrameTransform
               ) -> np.ndarray:
    """The test clips float32 ``[C, T, 3, h, w]`` of a tracklet held as RGB crops ``[h, w, 3]`` uint8 (cut from
    footage), the same clips :func:`tracklet_clips` takes from files; only the crops the clips use are resized."""
    return _clips_of(embed_clip_indices(len(crops), seq_len, sampling),
                     lambda distinct: transform(stack_crops([crops[i] for i in distinct], transform.image_size)))


def _clips_of(clip_indices: list[list[int]], frames_of) -> np.ndarray:
    """``[C, T, 3, h, w]``: the clips of ``clip_indices``, from ``frames_of(distinct indices)`` → ``[U, 3, h, w]``."""
    distinct = sorted({i for clip in clip_indices for i in clip})
    row_of = {frame: row for row, frame in enumerate(distinct)}
    frames = frames_of(distinct)
    return frames[[[row_of[i] for i in clip] for clip in clip_indices]]
