"""TF-CLIP's loss parts against hand-computed values and explicit loops."""

import math

import pytest
import torch

from tfclip_cli.losses import LossWeights, batch_hard_triplet, compute_losses, smoothed_cross_entropy
from tfclip_cli.model import ModelOutput


def test_smoothed_cross_entropy_matches_the_hand_computed_value() -> None:
    scores = torch.tensor([[2.0, 0.0, 0.0]])
    log_p = [2 - math.log(math.exp(2) + 2), -math.log(math.exp(2) + 2), -math.log(math.exp(2) + 2)]
    targets = [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]
    expected = -sum(t * lp for t, lp in zip(targets, log_p))
    assert smoothed_cross_entropy(scores, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def _triplet_by_loop(features: torch.Tensor, labels: list[int], margin: float) -> float:
    """For each anchor, every positive (itself included) and every negative; keep the hardest of each."""
    total = 0.0
    for a in range(len(labels)):
        positives = [torch.dist(features[a], features[p]).item() for p in range(len(labels)) if labels[p] == labels[a]]
        negatives = [torch.dist(features[a], features[n]).item() for n in range(len(labels)) if labels[n] != labels[a]]
        total += max(0.0, max(positives) - min(negatives) + margin)
    return total / len(labels)


def test_batch_hard_triplet_on_hand_listed_points() -> None:
    # Points on a line: label 0 at 0 and 1, label 1 at 1.2 and 3.
    features = torch.tensor([[0.0], [1.0], [1.2], [3.0]])
    # anchors: 0 -> (1, 1.2): 1 - 1.2 + 0.3 = 0.1; 1 -> (1, 0.2): 1.1; 1.2 -> (1.8, 0.2): 1.9; 3 -> (1.8, 2): 0.1
    expected = (0.1 + 1.1 + 1.9 + 0.1) / 4
    loss = batch_hard_triplet(features, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_batch_hard_triplet_matches_an_explicit_loop_on_random_features() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 5, generator=generator) * 2  # unnormalised on purpose
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    loss = batch_hard_triplet(features, torch.tensor(labels), margin=0.3)
    assert loss.item() == pytest.approx(_triplet_by_loop(features, labels, 0.3), abs=1e-4)


def test_batch_hard_triplet_is_zero_when_identities_are_far_apart() -> None:
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    assert batch_hard_triplet(features, torch.tensor([0, 0, 1, 1])).item() == 0.0


def _output(seq_len: int = 2) -> ModelOutput:
    generator = torch.Generator().manual_seed(3)
    batch, classes = 4, 3

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return ModelOutput(
        cls_scores=random(batch, classes),
        proj_scores=random(batch, classes),
        temporal_scores=random(batch, classes),
        frame_scores=random(batch * seq_len, classes),
        cls_features=random(batch, 6),
        proj_features=random(batch, 4),
        temporal_features=random(batch, 6),
        v2m_logits=random(batch, classes),
    )


def test_compute_losses_weights_each_part_and_leaves_the_frame_term_unweighted() -> None:
    output, labels = _output(), torch.tensor([0, 0, 2, 2])
    weights = LossWeights(id=0.5, triplet=2.0, v2m=3.0)
    parts = compute_losses(output, labels, weights, seq_len=2)
    ce = smoothed_cross_entropy
    expected_id = 0.5 * sum(ce(s, labels) for s in (output.cls_scores, output.proj_scores, output.temporal_scores))
    features = (output.cls_features, output.proj_features, output.temporal_features)
    expected_triplet = 2.0 * sum(batch_hard_triplet(f, labels) for f in features)
    frame_labels = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2])  # each clip's label once per frame, frames adjacent
    torch.testing.assert_close(parts["id"], expected_id)
    torch.testing.assert_close(parts["frame_id"], ce(output.frame_scores, frame_labels) / 2)
    torch.testing.assert_close(parts["triplet"], expected_triplet)
    torch.testing.assert_close(parts["v2m"], 3.0 * ce(output.v2m_logits, labels))
    torch.testing.assert_close(parts["total"], parts["id"] + parts["frame_id"] + parts["triplet"] + parts["v2m"])


def test_default_weights_are_the_reference_ones() -> None:
    assert LossWeights() == LossWeights(id=0.25, triplet=1.0, v2m=1.0)


def test_frame_labels_follow_the_clip_order() -> None:
    """Frames of a clip are adjacent ([B*T] = clip 0's T frames, then clip 1's), not tiled [0, 1, 2, 0, 0, 1, ...]."""
    def frame_loss(frame_labels: torch.Tensor) -> float:
        scores = torch.nn.functional.one_hot(frame_labels, 3).float() * 20
        output = ModelOutput(**{**vars(_output()), "frame_scores": scores})
        return compute_losses(output, torch.tensor([0, 1, 2, 0]), LossWeights(), seq_len=2)["frame_id"].item()

    adjacent = frame_loss(torch.tensor([0, 0, 1, 1, 2, 2, 0, 0]))
    tiled = frame_loss(torch.tensor([0, 1, 2, 0, 0, 1, 2, 0]))
    # Right frames: only the smoothing mass on the 2 wrong classes (logit gap 20) costs: 2 * 0.1/3 * 20, over T = 2.
    assert adjacent == pytest.approx(2 * 0.1 / 3 * 20 / 2, abs=1e-3)
    assert tiled > 5
