"""README and --help stay true: CI runs the README's test command, every command is helped and documented."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tfclip_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = sorted(c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line and "pip install" in line)
    assert test_command in README


def test_readme_has_exactly_two_setup_commands() -> None:
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(commands) == 2
    assert "tfclip demo" in commands[0] and "pytest" in commands[1]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name: str) -> None:
    assert f"tfclip {name}" in README


def test_cpu_and_gpu_extras_replace_each_other_and_the_setup_installs_one() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "faiss" not in base and "onnxruntime" not in base  # an extra can add a package, never remove one
    extras = project["optional-dependencies"]
    assert (sorted(extras["cpu"]), sorted(extras["gpu"])) == (
        ["faiss-cpu", "onnxruntime"], ["faiss-gpu", "onnxruntime-gpu"]
    )
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    for command in re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S):
        assert re.search(r"pip install -e '\.\[cpu[],]", command), command


PROJECT_TEXTS = ("README.md", "pyproject.toml", ".ci", "benchmarks", "docs", "recipes", "tests", "tfclip_cli")
OUTSIDE_SOURCES = ("../" + "shared", "REFERENCE" + ".md", "STYLE" + ".md")  # spelled apart so this file passes


def _project_files() -> list[Path]:
    """Every text file of the project a reader gets in a clone."""
    found = []
    for name in PROJECT_TEXTS:
        path = ROOT / name
        found += [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    return [p for p in found if "__pycache__" not in p.parts and p.suffix not in (".png", ".jpg", ".mp4", ".onnx")]


def test_no_project_file_cites_a_source_outside_the_repository() -> None:
    cited = [f"{path.relative_to(ROOT)}: {source}" for path in _project_files()
             for source in OUTSIDE_SOURCES if source in path.read_text(errors="replace")]
    assert cited == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_cited_fidelity_section_exists() -> None:
    fidelity = (ROOT / "docs" / "fidelity.md").read_text()
    anchors = {_anchor(line.lstrip("#")) for line in fidelity.splitlines() if line.startswith("#")}
    cited = {(path.name, anchor) for path in _project_files()
             for anchor in re.findall(r"docs/fidelity\.md#([\w\-]+)", path.read_text(errors="replace"))}
    assert len(cited) > 20
    assert sorted(c for c in cited if c[1] not in anchors) == []
    assert "AsuradaYuci/TF-CLIP" in fidelity and "497a4f2" in fidelity
