"""The layering holds (RANK below is its order): imports point down only, heavy libraries stay in one module."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfclip_cli"

# Higher rank may import lower rank, never the reverse nor sideways (same rank, other module).
RANK = {
    "errors": 0,
    "display": 1,
    "tables": 2,
    "recipe": 3,
    "frames": 3.5,
    "clips": 4,
    "model": 4,
    "runtime": 4.5,
    "losses": 5,
    "datasets": 6,
    "checkpoint": 7,
    "export": 7.5,
    "inference": 8,
    "evaluate": 8,
    "compare": 8,
    "alignment": 8,
    "report": 8.5,
    "train": 9,
    "index": 9,
    "quantize": 9,
    "footage": 9.5,
    "people": 9.7,
    "watch": 9.8,
    "demo": 10,
    "serve": 10,
    "cli": 11,
    "__main__": 12,
}
THIRD_PARTY_HOMES = {
    "decord": {"frames"},
    "faiss": {"index"},
    "open_clip": {"model", "checkpoint"},
    "rich": {"cli", "display"},
    "typer": {"cli"},
    "click": set(),
    "cv2": {"footage"},
    "onnx": {"export"},
    "onnxruntime": {"export", "runtime"},
    "fastapi": {"serve"},
    "uvicorn": {"serve"},
    "matplotlib": {"report"},
    "jinja2": {"report"},
    "markupsafe": {"report"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def _home(path: Path) -> str:
    """The top-level module a file belongs to (`datasets/mars.py` → `datasets`)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: use absolute imports (from tfclip_cli...)")
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_only(path: Path) -> None:
    home = _home(path)
    assert home in RANK, f"{home} has no place in the layering; add it to RANK"
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "tfclip_cli" or len(parts) < 2 or parts[1] == "__version__":
            continue
        target = parts[1]
        if target == home or target not in RANK:
            continue
        assert RANK[target] < RANK[home], f"{path.name} ({home}) imports {target}: imports must point down"


@pytest.mark.parametrize("library", sorted(THIRD_PARTY_HOMES))
def test_heavy_libraries_stay_in_their_module(library: str) -> None:
    for path in _modules():
        uses = {n.split(".")[0] for n in _imports(path)}
        if library in uses:
            assert _home(path) in THIRD_PARTY_HOMES[library], f"{path} imports {library}"


def test_the_cli_loads_no_plotting_or_template_library_until_a_command_draws() -> None:
    code = ("import sys, tfclip_cli.cli; "
            "print(sorted(m for m in ('matplotlib', 'jinja2', 'tfclip_cli.report') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
