"""The `tfclip` command: one thin Typer function per subcommand over the Python API.

Heavy libraries (torch, open_clip, faiss, decord) are imported inside command bodies so `tfclip --help` is instant.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from tfclip_cli import __version__, display
from tfclip_cli.errors import UserError

app = typer.Typer(
    name="tfclip",
    help="Video-based person re-identification with TF-CLIP: prepare data, train, extract, evaluate, index, query.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write the result.", dir_okay=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")]
CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="A tfclip checkpoint (.ckpt).", exists=True, dir_okay=False)
]
RecipeArg = Annotated[
    Path, typer.Argument(help="A YAML recipe, e.g. recipes/mars.yaml.", exists=True, dir_okay=False)
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a recipe key in dotted form, e.g. --set solver.epochs=10 (repeatable)."),
]


def _version(value: bool) -> None:
    if value:
        display.stdout.print(f"tfclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Video-based person re-identification with TF-CLIP."""
    display.setup_logging(verbose)


def _report(error: UserError) -> None:
    display.stderr.print(f"[bold red]error:[/] {error.message}", highlight=False)
    if error.hint:
        display.stderr.print(f"[dim]hint:[/] {error.hint}", highlight=False)


def command(name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a subcommand whose UserError becomes one red line and exit code 2, and Ctrl-C exit 130."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(func)
        def run(*args, **kwargs) -> None:
            try:
                func(*args, **kwargs)
            except UserError as error:
                _report(error)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                display.stderr.print("[yellow]interrupted[/]")
                raise typer.Exit(130) from None

        return app.command(name)(run)

    return register


def main() -> None:
    """Entry point of the `tfclip` console script and of `python -m tfclip_cli`."""
    app()
