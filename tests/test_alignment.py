"""`tfclip inspect-memory`: memory norms, cosine between identities, and cosine to CLIP's text embeddings of person
prompts against random directions, on a tiny random text tower saved as a state dict."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tiny_training import TINY_CONFIG
from tfclip_cli.alignment import PROMPTS, inspect_memory
from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
from tfclip_cli.cli import app
from tfclip_cli.errors import CheckpointError, UserError
from tfclip_cli.model import build_model
from tfclip_cli.model.text import TextSpec, build_text_encoder, encode_prompts

DIM = 64  # tfclip-tiny's projection width


@pytest.fixture(scope="module")
def text_weights(tmp_path_factory) -> Path:
    """A tiny CLIP text tower with random weights (CLIP's 49,408-token vocabulary, width 64, one layer), saved as an
    open_clip-style state dict beside a visual.* key that must be ignored."""
    torch.manual_seed(0)
    encoder = build_text_encoder(TextSpec(context_length=16, vocab_size=49408, width=64, layers=1, output_dim=DIM),
                                 quick_gelu=True)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save({**encoder.state_dict(), "visual.proj": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6)}, path)
    return path


def _checkpoint(path: Path, memory: torch.Tensor | None, pid_to_label: dict[int, int]) -> Path:
    model = build_model(TINY_CONFIG)
    save_checkpoint(Checkpoint(model_config=TINY_CONFIG.to_dict(), model_state=model.state_dict(),
                               pid_to_label=pid_to_label, memory=memory), path)
    return path


def test_norms_and_inter_identity_cosines_of_a_hand_made_memory(tmp_path: Path) -> None:
    memory = torch.zeros(3, DIM)
    memory[0, 0], memory[1, 0], memory[1, 1], memory[2, 2] = 3.0, 1.0, 1.0, 0.5  # norms 3, sqrt 2, 0.5
    result = inspect_memory(_checkpoint(tmp_path / "m.ckpt", memory, {10: 0, 11: 1, 12: 2}))
    assert result.per_identity_norm == pytest.approx({10: 3.0, 11: 2 ** 0.5, 12: 0.5})
    cosines = sorted([1 / 2 ** 0.5, 0.0, 0.0])  # (0,1), (0,2), (1,2)
    assert result.inter_identity_cosine.count == 3
    assert result.inter_identity_cosine.max == pytest.approx(cosines[-1])
    assert result.inter_identity_cosine.mean == pytest.approx(sum(cosines) / 3)
    assert result.prompts == () and result.random_cosine is None


def test_a_memory_row_equal_to_the_text_embedding_has_cosine_one_and_random_rows_do_not(tmp_path: Path,
                                                                                      text_weights: Path) -> None:
    from tfclip_cli.checkpoint import load_text_encoder

    text = encode_prompts(load_text_encoder(text_weights, quick_gelu=True), [PROMPTS[0]])[0]
    random_rows = torch.randn(5, DIM, generator=torch.Generator().manual_seed(3))
    memory = torch.cat([2.5 * text[None], random_rows])
    result = inspect_memory(_checkpoint(tmp_path / "m.ckpt", memory, {pid: pid for pid in range(6)}),
                            clip_weights=text_weights)
    person = result.prompts[0]
    assert person.prompt == PROMPTS[0] and person.per_identity[0] == pytest.approx(1.0, abs=1e-5)
    oracle = torch.nn.functional.cosine_similarity(random_rows, text[None], dim=1)
    assert [person.per_identity[pid] for pid in range(1, 6)] == pytest.approx(oracle.tolist(), abs=1e-5)
    assert len(result.prompts) == len(PROMPTS)
    assert abs(result.random_cosine.mean) < 0.05 and result.random_cosine.count == 6 * 1000
    assert result.random_cosine.std == pytest.approx(1 / DIM ** 0.5, rel=0.15)  # 0 ± 1/sqrt(D)


def test_cli_prints_a_table_and_json(tmp_path: Path, text_weights: Path) -> None:
    path = _checkpoint(tmp_path / "m.ckpt", torch.randn(4, DIM), {})
    runner = CliRunner()
    table = runner.invoke(app, ["inspect-memory", str(path), "--clip-weights", str(text_weights)],
                          terminal_width=300)
    assert table.exit_code == 0, table.output
    assert "cosine between identities" in table.output and "cosine to random directions" in table.output
    payload = json.loads(runner.invoke(app, ["inspect-memory", str(path), "--json"]).stdout)
    assert payload["num_identities"] == 4 and payload["dim"] == DIM and payload["prompts"] == []


def test_no_memory_or_no_text_tower_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no CLIP-Memory"):
        inspect_memory(_checkpoint(tmp_path / "none.ckpt", None, {}))
    visual_only = tmp_path / "visual.pt"
    torch.save({"visual.proj": torch.zeros(4, 4)}, visual_only)
    with pytest.raises(CheckpointError, match="no text tower"):
        inspect_memory(_checkpoint(tmp_path / "m.ckpt", torch.randn(2, DIM), {}), clip_weights=visual_only)
    result = CliRunner().invoke(app, ["inspect-memory", str(tmp_path / "none.ckpt")])
    assert result.exit_code == 2 and "holds no CLIP-Memory" in result.output
