"""The `tfclip` command: one thin Typer function per subcommand over the Python API.

Heavy libraries (torch, open_clip, faiss, decord) are imported inside command bodies so `tfclip --help` is instant.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional, Sequence

import typer
from rich.markup import escape
from typer.core import TyperGroup

from tfclip_cli import __version__, display
from tfclip_cli.errors import Terminated, UserError

if TYPE_CHECKING:
    from rich.table import Table

    from tfclip_cli.datasets import SplitSummary
    from tfclip_cli.datasets.synthetic_footage import FootageOptions
    from tfclip_cli.footage.query import PersonPointer
    from tfclip_cli.index import IndexInfo
    from tfclip_cli.quantize import Int8Export
    from tfclip_cli.tables import Manifest

class _OneLineErrors(TyperGroup):
    """The app's command group: a value Typer refuses (its own path checks: a missing file, a folder for a file) is
    one red line and exit code 2 like every other error, not a boxed usage message."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as error:
            _report(UserError(error.format_message()))
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_OneLineErrors,
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
    display.stderr.print(f"[bold red]error:[/] {escape(display.plain(error.message))}", highlight=False,
                         soft_wrap=True)
    if error.hint:
        display.stderr.print(f"[dim]hint:[/] {escape(display.plain(error.hint))}", highlight=False, soft_wrap=True)


# What the `cpu` / `gpu` extras install (one of them, never both: the two variants write the same package).
EXTRA_PACKAGES = ("faiss", "onnxruntime")


def command(name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a subcommand whose UserError becomes one red line and exit code 2, Ctrl-C exit 130, SIGTERM 143."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(func)
        def run(*args, **kwargs) -> None:
            try:
                func(*args, **kwargs)
            except UserError as error:
                _report(error)
                raise typer.Exit(2) from None
            except ModuleNotFoundError as error:
                if error.name not in EXTRA_PACKAGES:
                    raise
                _report(UserError(
                    f"{error.name} is not installed: tfclip needs one of its extras for it",
                    hint="pip install 'tfclip[cpu]' (or 'tfclip[gpu]' on a CUDA machine; from a clone: pip install -e '.[cpu]')",
                ))
                raise typer.Exit(2) from None
            except KeyboardInterrupt as interrupt:
                is_terminated = isinstance(interrupt, Terminated)
                display.stderr.print("[yellow]terminated[/]" if is_terminated else "[yellow]interrupted[/]")
                raise typer.Exit(143 if is_terminated else 130) from None

        return app.command(name)(run)

    return register


@command("import-checkpoint")
def import_checkpoint(
    source: Annotated[
        Path, typer.Argument(help="A state dict saved by the TF-CLIP reference code.", exists=True, dir_okay=False)
    ],
    out: OutOpt,
    force: ForceOpt = False,
) -> None:
    """Convert a checkpoint of the official TF-CLIP code into a tfclip checkpoint (config inferred from shapes).

    Example: tfclip import-checkpoint MARS_best_model.pth.tar --out runs/mars-official.ckpt
    """
    from rich.table import Table

    from tfclip_cli.checkpoint import import_reference_checkpoint, save_checkpoint
    from tfclip_cli.tables import check_writable

    check_writable(out, force=force)
    checkpoint = import_reference_checkpoint(source)
    save_checkpoint(checkpoint, out, force=force)
    table = Table("model", "value", title=display.plain_text(out), title_justify="left")
    for key, value in checkpoint.model_config.items():
        table.add_row(key, str(value))
    table.add_row("ignored (unused by the reference)", ", ".join(checkpoint.provenance["ignored_keys"]) or "-")
    display.stdout.print(table)


SYNTHETIC_PANEL = "Synthetic dataset (KIND synthetic)"


def _synthetic_option(help_text: str) -> typer.models.OptionInfo:
    return typer.Option(help=help_text, rich_help_panel=SYNTHETIC_PANEL, show_default=False)


def _print_summary(manifest: Manifest, summary: Sequence[SplitSummary]) -> None:
    """A rich table of per-split counts, titled with the dataset and its gallery rule."""
    from rich.table import Table

    table = Table(title=display.plain_text(f"{manifest.info.dataset} ({manifest.info.gallery_rule.replace('_', ' ')})"))
    for column in ("split", "ids", "tracklets", "frames", "cameras"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for row in summary:
        table.add_row(row.split, *(f"{getattr(row, c):,}" for c in ("ids", "tracklets", "frames", "cameras")))
    display.stdout.print(table)


FOOTAGE_FLAGS = {"identities": "walkers", "cameras": "cameras", "image_size": "image_size", "max_frames": "frames",
                 "seed": "seed"}


def _footage_options(given: dict[str, object]) -> FootageOptions:
    """The synthetic options given with ``--footage`` as FootageOptions; an option footage cannot use is an error."""
    from tfclip_cli.datasets.synthetic_footage import FootageOptions

    unused = [name for name in given if name not in FOOTAGE_FLAGS]
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise UserError(f"{flags} do not apply with --footage: only --identities (walkers), --cameras, --image-size, "
                        "--max-frames (frames per video) and --seed do")
    return FootageOptions(**{FOOTAGE_FLAGS[name]: value for name, value in given.items()})


@command("prepare")
def prepare(
    kind: Annotated[
        str, typer.Argument(help="Layout of ROOT: mars, lsvid, ilidsvid, prid2011, folder, synthetic or footage.")
    ],
    root: Annotated[Path, typer.Argument(help="The dataset folder (for synthetic: a new folder to draw it into).")],
    out: OutOpt,
    force: ForceOpt = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on an unreadable or missing frame or video instead of skipping it.")
    ] = False,
    split_id: Annotated[
        Optional[int], typer.Option("--split-id", help="ilidsvid, prid2011: which of the 10 splits (0-9).", min=0)
    ] = None,
    train_chunk: Annotated[
        Optional[int],
        typer.Option(
            "--train-chunk",
            min=0,
            help="lsvid: frames per training chunk, the last chunk keeping the remainder and tracklets shorter than "
            "N left out: 48 unless given, the official protocol; 0 trains on whole tracklets.",
        ),
    ] = None,
    window: Annotated[
        Optional[int],
        typer.Option(
            "--window",
            min=0,
            help="ilidsvid: cut every sequence into windows of N frames, each its own train, query or gallery item "
            "(8 unless given, the official protocol; must equal the recipe's data.seq_len); 0 keeps whole sequences.",
        ),
    ] = None,
    window_stride: Annotated[
        Optional[int], typer.Option("--window-stride", min=1, help="ilidsvid: frames between window starts (4 unless given).")
    ] = None,
    identities: Annotated[Optional[int], _synthetic_option("Identities with tracklets (default 60).")] = None,
    cameras: Annotated[Optional[int], _synthetic_option("Cameras (default 3).")] = None,
    tracklets_per_camera: Annotated[
        Optional[int], _synthetic_option("Tracklets per identity per camera (default 1).")
    ] = None,
    train_fraction: Annotated[
        Optional[float], _synthetic_option("Share of identities used for training (default 0.5).")
    ] = None,
    distractors: Annotated[Optional[int], _synthetic_option("Gallery-only distractor identities (default 5).")] = None,
    image_size: Annotated[
        Optional[tuple[int, int]], _synthetic_option("Frame HEIGHT WIDTH, both even (default 256 128).")
    ] = None,
    min_frames: Annotated[Optional[int], _synthetic_option("Shortest tracklet (default 12).")] = None,
    max_frames: Annotated[Optional[int], _synthetic_option("Longest tracklet (default 64).")] = None,
    video_fraction: Annotated[
        Optional[float], _synthetic_option("Share of tracklets written as .mp4 videos (default 0.33).")
    ] = None,
    seed: Annotated[Optional[int], _synthetic_option("Seed fixing every pixel (default 0).")] = None,
    footage: Annotated[
        bool,
        typer.Option(
            "--footage",
            rich_help_panel=SYNTHETIC_PANEL,
            help="Draw a camera network's footage instead: ROOT/footage/cam<N>/cam<N>_<start>.mp4 with a MOTChallenge "
            "gt.txt beside each, ROOT/footage/mtmc_gt.txt (AI City layout) and cameras.yaml (the camera graph for "
            "tfclip link), and the ground-truth crops as the manifest's tracklets. Here --identities sets the "
            "walkers (3-20; 8 unless given), --max-frames the frames per video (160 at 10 frames/s unless given), "
            "--image-size the video size (288 384 unless given), --cameras the cameras (4 unless given), --seed as "
            "above (a new seed, a new network); other options do not apply.",
        ),
    ] = False,
) -> None:
    """Parse a dataset layout into a manifest (one Parquet row per tracklet) and print its splits.

    Example: tfclip prepare synthetic data/synthetic --out data/synthetic.parquet
    """
    from tfclip_cli import datasets, tables
    from tfclip_cli.datasets.synthetic import SyntheticOptions

    tables.check_writable(out, force=force)
    drawn = {
        "identities": identities,
        "cameras": cameras,
        "tracklets_per_camera": tracklets_per_camera,
        "train_fraction": train_fraction,
        "distractors": distractors,
        "image_size": image_size,
        "min_frames": min_frames,
        "max_frames": max_frames,
        "video_fraction": video_fraction,
        "seed": seed,
    }
    given = {name: value for name, value in drawn.items() if value is not None}
    footage_options = _footage_options(given) if footage else None
    synthetic = SyntheticOptions(**given) if given and not footage else None
    manifest = datasets.prepare(
        kind, root, split_id=split_id, train_chunk=train_chunk, window=window, window_stride=window_stride,
        synthetic=synthetic, synthetic_footage=footage_options, strict=strict,
    )
    tables.write_manifest(manifest, out, force=force)
    _print_summary(manifest, datasets.summarize(manifest))
    display.stderr.print(display.plain_text(f"wrote {out}"))


def _print_train_result(result) -> None:
    """The run's outcome: epochs, best evaluation and checkpoint paths."""
    from rich.table import Table

    table = Table("", "value", title=display.plain_text(result.run_dir), title_justify="left")
    table.add_row("epochs done", str(result.epochs_done))
    if result.best is not None:
        table.add_row(f"best (epoch {result.best_epoch})", f"mAP {100 * result.best.mAP:.1f}%  "
                      f"rank-1 {100 * result.best.rank1:.1f}%  rank-5 {100 * result.best.rank5:.1f}%  "
                      f"({result.best.gallery_rule.replace('_', ' ')})")
    table.add_row("last checkpoint", display.plain_text(result.last_checkpoint))
    table.add_row("best checkpoint", display.plain_text(result.best_checkpoint or "-"))
    display.stdout.print(table)


@command("build-memory")
def build_memory(recipe: RecipeArg, overrides: SetOpt = None, force: ForceOpt = False) -> None:
    """Compute the CLIP-Memory (one CLIP feature per training identity) into the recipe's run directory.

    Example: tfclip build-memory recipes/mars.yaml --set data.workers=16
    """
    from tfclip_cli.recipe import load_recipe
    from tfclip_cli.train import build_memory_file

    result = build_memory_file(load_recipe(recipe, overrides or []), force=force)
    display.stdout.print(display.plain_text(
        f"wrote {result.path}: {result.num_identities} identities x {result.dim} (fingerprint {result.fingerprint[:16]})"
    ))


@command("train")
def train(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last.ckpt.")] = False,
    gpus: Annotated[
        int, typer.Option("--gpus", min=1, help="Train on N GPUs of this machine (relaunches itself with torchrun).")
    ] = 1,
) -> None:
    """Train TF-CLIP from a YAML recipe: progress, metrics.csv, evaluation, best.ckpt and last.ckpt in its run folder.

    Example: tfclip train recipes/synthetic-tiny.yaml --set solver.epochs=5
    """
    import os

    from tfclip_cli.recipe import load_recipe
    from tfclip_cli import train as training

    loaded = load_recipe(recipe, overrides or [])
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        argv = ["train", str(recipe), *(f"--set={item}" for item in overrides or []), *(["--resume"] if resume else [])]
        raise typer.Exit(training.relaunch_distributed(gpus, argv))
    result = training.train(loaded, resume=resume)
    if display.is_main_process():
        _print_train_result(result)


class ExtractSampling(str, Enum):
    dense = "dense"
    rrs = "rrs"


class ExtractPrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    auto = "auto"


class Backend(str, Enum):
    torch = "torch"
    onnx = "onnx"


BackendOpt = Annotated[
    Optional[Backend],
    typer.Option("--backend", help="Default: the file's (onnxruntime for a .onnx file from tfclip export, without "
                 "importing torch; PyTorch for a checkpoint). onnx on a checkpoint exports it once and keeps the "
                 "export beside it, re-exported when the checkpoint changes.", show_default=False),
]


@command("extract")
def extract(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", "-c", help="A tfclip checkpoint (.ckpt), or an exported .onnx file.",
                     exists=True, dir_okay=False),
    ],
    out: OutOpt,
    inputs: Annotated[
        Optional[list[Path]], typer.Argument(help="Videos or frame folders to embed, instead of --manifest.")
    ] = None,
    manifest: Annotated[
        Optional[Path], typer.Option("--manifest", "-m", help="A manifest to embed.", exists=True, dir_okay=False)
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Manifest splits to embed, comma-separated.")] = "query,gallery",
    sampling: Annotated[
        ExtractSampling, typer.Option("--sampling", help="dense: average all 8-frame clips; rrs: one clip, faster.")
    ] = ExtractSampling.dense,
    camid: Annotated[
        Optional[int], typer.Option("--camid", min=0, help="Camera of the given videos (for SIE); default unknown.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per forward pass.")] = 32,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes decoding frames.")] = 4,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Write the readable tracklets even if some cannot be read.")
    ] = False,
    backend: BackendOpt = None,
    force: ForceOpt = False,
    precision: Annotated[
        ExtractPrecision,
        typer.Option("--precision", help="fp32 as the reference evaluates; fp16, bf16 or auto: autocast on CUDA."),
    ] = ExtractPrecision.fp32,
) -> None:
    """Embed a manifest's tracklets (or video files / frame folders) with a checkpoint into an embeddings table.

    Example: tfclip extract --checkpoint runs/mars-tfclip/best.ckpt --manifest runs/mars/manifest.parquet --out runs/mars/emb.parquet
    """
    from tfclip_cli.inference import extract_to_file

    if (manifest is None) == (not inputs):
        raise UserError("give either --manifest M.parquet or video files / frame folders, not both or neither")
    if manifest is not None and camid is not None:
        raise UserError("--camid applies to video files / frame folders; a manifest has its own cameras")
    result = extract_to_file(
        checkpoint, out, manifest=manifest, splits=tuple(s.strip() for s in split.split(",") if s.strip()),
        paths=tuple(inputs or ()), camid=camid, sampling=sampling.value, batch_size=batch_size, workers=workers,
        skip_bad=skip_bad, force=force, precision=precision.value, backend=backend and backend.value,
    )
    if not display.is_main_process():
        return
    for failure in result.failures:
        display.stderr.print(f"[yellow]skipped:[/] {escape(display.plain(failure))}", highlight=False)
    embeddings = result.embeddings
    display.stderr.print(display.plain_text(
        f"wrote {out}: {len(embeddings.rows)} tracklets x {embeddings.dim} ({sampling.value})"))


GALLERY_RULE_NAMES = {"includes_query": "every test tracklet, queries included", "gallery_only": "gallery split only"}


def _print_eval_result(path: Path, result, *, reranked: bool) -> None:
    """The metrics as a rich table, then the gallery rule and the query/gallery counts."""
    from rich.table import Table

    title = display.plain_text(f"{path}{' (re-ranked)' if reranked else ''}")
    table = Table("metric", "value", title=title, title_justify="left")
    for name in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP"):
        table.add_row(name.replace("rank", "rank-"), f"{100 * getattr(result, name):.2f}%")
    display.stdout.print(table)
    display.stdout.print(
        f"gallery rule: {result.gallery_rule} ({GALLERY_RULE_NAMES[result.gallery_rule]}); "
        f"{result.num_query:,} queries ({result.num_skipped_queries:,} skipped: no true match), "
        f"{result.num_gallery:,} ranked tracklets",
        highlight=False,
        soft_wrap=True,
    )


@command("evaluate")
def evaluate(
    embeddings: Annotated[
        Path, typer.Argument(help="An embeddings table written by tfclip extract.", exists=True, dir_okay=False)
    ],
    json_output: JsonOpt = False,
    rerank: Annotated[
        bool,
        typer.Option("--rerank", help="k-reciprocal re-ranking (Zhong et al. 2017), the official code's k1=50, k2=15, "
                     "lambda=0.3."),
    ] = False,
    includes_query: Annotated[
        Optional[bool],
        typer.Option(
            "--gallery-includes-query/--gallery-only",
            help="Rank queries against every test tracklet (official MARS) or the gallery split only; "
            "default: the rule recorded in the table, else gallery-only.",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option("--report", help="Also write an HTML report: CMC to rank 50, score distributions, mAP per "
                     "camera pair, the worst queries with their top 10.", dir_okay=False),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --report.")] = False,
) -> None:
    """Report mAP, CMC rank-1/5/10/20 and mINP of an embeddings table's queries against its gallery.

    Example: tfclip evaluate runs/mars/emb.parquet --report runs/mars/evaluation.html
    """
    import dataclasses
    import json

    from tfclip_cli.evaluate import RerankParams, evaluate_file

    rule = None if includes_query is None else ("includes_query" if includes_query else "gallery_only")
    if report is not None:
        result = _evaluate_with_report(embeddings, report, gallery_rule=rule, is_reranked=rerank, force=force)
    else:
        result = evaluate_file(embeddings, gallery_rule=rule, rerank=RerankParams() if rerank else None)
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(result)))
    else:
        _print_eval_result(embeddings, result, reranked=rerank)


def _evaluate_with_report(embeddings: Path, report: Path, *, gallery_rule: str | None, is_reranked: bool,
                          force: bool):
    """``tfclip evaluate --report``: the metrics, and the report of the ranking behind them."""
    from tfclip_cli.report.evaluation import evaluate_with_report
    from tfclip_cli.tables import check_writable, read_embeddings

    if is_reranked:
        raise UserError("--report draws the cosine ranking; re-ranked distances are not cosine scores",
                        hint="drop --rerank, or run the command twice")
    check_writable(report, force=force)
    result = evaluate_with_report(read_embeddings(embeddings), report, gallery_rule=gallery_rule,
                                  source=str(embeddings), force=force)
    display.stderr.print(display.plain_text(f"wrote {report}"))
    return result


class IndexKind(str, Enum):
    flat = "flat"
    ivfpq = "ivfpq"
    ivfpq_fp16 = "ivfpq-fp16"
    ivfpq_sq8 = "ivfpq-sq8"
    ivfpq_norescore = "ivfpq-norescore"
    hnsw = "hnsw"
    auto = "auto"


@command("index")
def index(
    embeddings: Annotated[
        Optional[Path],
        typer.Argument(help="An embeddings table written by tfclip extract.", exists=True, dir_okay=False),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The gallery to write.", dir_okay=False)] = None,
    index_type: Annotated[
        Optional[IndexKind],
        typer.Option("--type", help="flat: exact; ivfpq / hnsw: approximate, for large galleries; ivfpq-fp16 / "
                     "ivfpq-sq8 / ivfpq-norescore: ivfpq keeping 1/2, 1/4 or none of the float32 vectors; auto: "
                     "chosen by size within --memory-budget. [default: flat]"),
    ] = None,
    memory_budget: Annotated[
        Optional[str],
        typer.Option("--memory-budget", help="With --type auto: the most memory the index may take, e.g. 4GiB, "
                     "512MiB. [default: 8GiB]"),
    ] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="Train and add on all visible GPUs (needs faiss-gpu).")] = False,
    append: Annotated[
        bool, typer.Option("--append", help="Add the table's tracklets to the existing index at --out.")
    ] = False,
    compact: Annotated[
        Optional[Path],
        typer.Option("--compact", help="Fold the append log of this gallery into its base and index files (alone).",
                     exists=True, dir_okay=False),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Build a FAISS gallery (index, rows and header) from an embeddings table, --append to one, or --compact one.

    Example: tfclip index runs/mars/emb.parquet --out runs/mars/gallery.faiss --type auto --memory-budget 4GiB
    """
    from tfclip_cli.index import DEFAULT_MEMORY_BUDGET, append_to_index, build_index, compact_index, parse_memory_budget
    from tfclip_cli.tables import read_embeddings

    if compact is not None:
        if (embeddings is not None or out is not None or index_type is not None or memory_budget is not None or gpu
                or append or force):
            raise UserError("--compact takes the gallery alone", hint=f"run: tfclip index --compact {compact}")
        _print_index_summary("compacted", compact, compact_index(compact))
        return
    if embeddings is None or out is None:
        raise UserError("give an embeddings table and --out (or --compact GALLERY)",
                        hint="tfclip index E.parquet --out gallery.faiss")
    if append and (index_type is not None or gpu or force or memory_budget is not None):
        raise UserError("--append keeps the index's type and rewrites it on the CPU; drop --type, --memory-budget, "
                        "--gpu and --force")
    if memory_budget is not None and index_type is not IndexKind.auto:
        raise UserError("--memory-budget chooses the type of --type auto", hint="add --type auto, or drop it")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_memory_budget(memory_budget)
    table = read_embeddings(embeddings)
    if append:
        info = append_to_index(table, out)
    else:
        kind = (index_type or IndexKind.flat).value
        info = build_index(table, out, index_type=kind, memory_budget=budget, use_gpu=gpu, force=force)
    _print_index_summary("appended to" if append else "wrote", out, info)


def _print_index_summary(verb: str, path: Path, info: IndexInfo) -> None:
    params = ", ".join(f"{key}={value}" for key, value in info.params.items())
    display.stdout.print(display.plain_text(
        f"{verb} {path}: {info.type} index of {info.live_count:,} tracklets x {info.dim}-d"
        + (f" ({params})" if params else "")
        + (f"\n--type auto chose {info.type}: {info.choice['reason']}" if info.choice and verb == "wrote" else "")
    ))


@command("calibrate")
def calibrate(
    embeddings: Annotated[
        Path,
        typer.Argument(help="Labelled embeddings (tfclip extract) of the gallery's checkpoint.", exists=True,
                       dir_okay=False),
    ],
    gallery: Annotated[
        Path, typer.Option("--gallery", "-g", help="The gallery (tfclip index) to store the threshold in.",
                           exists=True, dir_okay=False)
    ],
    fpir: Annotated[
        Optional[float],
        typer.Option("--fpir", help="Per search (1:N, the default rule): the share of searches for a person not in "
                     "the gallery that may return anyone above the threshold; default 0.01.", show_default=False),
    ] = None,
    rank: Annotated[
        Optional[int],
        typer.Option("--rank", min=1, help="Per search: a person in the gallery is found when a mate ranks at most "
                     "this, above the threshold (FNIR counts the misses); default 1.", show_default=False),
    ] = None,
    fmr: Annotated[
        Optional[float],
        typer.Option("--fmr", help="The per-pair rule instead: the share of impostor pairs allowed above the "
                     "threshold (a search over N tracklets returns a stranger far more often).", show_default=False),
    ] = None,
    json_output: JsonOpt = False,
    report: Annotated[
        Optional[Path],
        typer.Option("--report", help="Also write an HTML report: the DET curve with the chosen point, and the "
                     "genuine / impostor score histograms with the threshold.", dir_okay=False),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --report.")] = False,
) -> None:
    """Compute the "no match" score threshold from labelled embeddings, per search at an FPIR (or per pair at a
    false-match rate), with the DET table; store it in the gallery.

    Example: tfclip calibrate runs/mars/val-emb.parquet --gallery runs/mars/gallery.faiss --fpir 0.01 --report cal.html
    """
    import dataclasses
    import json

    from tfclip_cli.index import calibrate_gallery, calibrate_gallery_per_pair
    from tfclip_cli.tables import check_writable

    if fmr is not None and (fpir is not None or rank is not None):
        raise UserError("--fmr is the per-pair rule; --fpir and --rank the per-search one: pass one rule")
    if report is not None:
        check_writable(report, force=force)
    if fmr is not None:
        pair = calibrate_gallery_per_pair(gallery, embeddings, fmr=fmr)
        if report is not None:
            _write_calibration_report(embeddings, pair, report, force=force)
        if json_output:
            typer.echo(json.dumps(dataclasses.asdict(pair)))
            return
        display.stdout.print(display.plain_text(
            f"{gallery}: threshold {pair.threshold:.4f} by the per-pair rule at false-match rate {pair.fmr:g} "
            f"(measured {pair.false_match_rate:.4f}); genuine-accept rate {100 * pair.genuine_accept_rate:.1f}% "
            f"({pair.genuine_pairs:,} genuine, {pair.impostor_pairs:,} impostor pairs)"
        ))
        return
    result = calibrate_gallery(gallery, embeddings, fpir=0.01 if fpir is None else fpir,
                               rank=1 if rank is None else rank)
    if report is not None:
        _write_calibration_report(embeddings, result, report, force=force)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    display.stdout.print(display.det_table(result, gallery=str(gallery)))


def _write_calibration_report(embeddings: Path, calibration, report: Path, *, force: bool) -> None:
    """``tfclip calibrate --report``: the report of the calibration just stored."""
    from tfclip_cli.report.calibration import write_calibration_report
    from tfclip_cli.tables import read_embeddings

    write_calibration_report(read_embeddings(embeddings), calibration, report, force=force)
    display.stderr.print(display.plain_text(f"wrote {report}"))


QUERY_DETECTOR = "auto"  # the default of tfclip track (footage.detect.DEFAULT_DETECTOR)
QueryDetectorOpt = Annotated[
    str,
    typer.Option("--detector", help="Tells person crops from footage and finds the people in footage: "
                 "auto (ssdlite if installed, else hog), ssdlite, hog, a YOLO .onnx file, gt:PATH or gt (replay "
                 "a MOTChallenge gt.txt, e.g. the one beside the query video)."),
]


def _person_pointer(box: str | None, frame: int | None, person: int | None) -> PersonPointer | None:
    """``--box X,Y,W,H --frame F`` as a footage.query.PersonPointer (None without them).

    Raises:
        UserError: one of --box and --frame without the other, either with --person, or a malformed box.
    """
    from tfclip_cli.footage.query import PersonPointer

    if (box is None) != (frame is None):
        raise UserError("--box and --frame go together: the box is a person's place in that frame")
    if box is None:
        return None
    if person is not None:
        raise UserError("--person and --box/--frame both pick a person: pass one of them")
    try:
        x, y, w, h = (float(v) for v in box.split(","))
    except ValueError:
        raise UserError(f"--box {box}: expected X,Y,W,H pixel numbers, e.g. 120,40,60,150") from None
    if w <= 0 or h <= 0:
        raise UserError(f"--box {box}: width and height must be positive")
    return PersonPointer(frame=frame, box=(x, y, x + w, y + h))


@command("query")
def query(
    clips: Annotated[list[Path], typer.Argument(help="Video files or frame folders of the person to look for.")],
    gallery: Annotated[
        Path, typer.Option("--gallery", "-g", help="A FAISS index written by tfclip index.", dir_okay=False)
    ],
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(
            "--checkpoint", "-c", help="Checkpoint, or its exported .onnx file (run by onnxruntime: torch is never "
            "imported), to embed with; default: the checkpoint recorded in the index.",
            exists=True, dir_okay=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Gallery tracklets to return per clip.")] = 10,
    min_score: Annotated[
        str,
        typer.Option(
            "--min-score",
            help="Drop hits scoring below this: a number, 'auto' (the threshold of tfclip calibrate) or 'off'.",
        ),
    ] = "off",
    json_output: JsonOpt = False,
    html_out: Annotated[
        Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report here.", dir_okay=False)
    ] = None,
    backend: BackendOpt = None,
    force: ForceOpt = False,
    detector: QueryDetectorOpt = QUERY_DETECTOR,
    person: Annotated[
        Optional[int], typer.Option("--person", min=1, help="Footage: search for person N only (as numbered in the "
                                    "report, by first appearance).")
    ] = None,
    box: Annotated[
        Optional[str], typer.Option("--box", metavar="X,Y,W,H", help="Footage: search for the person in this pixel "
                                    "box at --frame.")
    ] = None,
    frame: Annotated[
        Optional[int], typer.Option("--frame", min=0, help="The 0-based frame index --box points into.")
    ] = None,
) -> None:
    """Find the gallery tracklets most similar to query clips (person crops, or each person in footage), as a table,
    JSON or an HTML report.

    Example: tfclip query person.mp4 --gallery runs/mars/gallery.faiss --top-k 10 --html report.html
    """
    import json

    from tfclip_cli.index import SearchOptions, parse_min_score
    from tfclip_cli.people.answer import query_people
    from tfclip_cli.tables import check_writable

    if html_out is not None:
        check_writable(html_out, force=force)
    search = SearchOptions(checkpoint=checkpoint, top_k=top_k, device=None, with_hit_frames=html_out is not None,
                           min_score=parse_min_score(min_score), backend=backend and backend.value)
    answer = query_people(gallery, clips, detector=detector, search=search, person=person,
                          pointer=_person_pointer(box, frame, person))
    per_query = answer.per_query  # a person each
    if html_out is not None:
        from tfclip_cli.report.query import render_query_report
        from tfclip_cli.report.render import write_page

        page = render_query_report(per_query, gallery=str(gallery), people=answer.people,
                                   visit_frames=answer.visit_frames)
        write_page(page, html_out, force=force)
        display.stderr.print(display.plain_text(f"wrote {html_out}"))
    if json_output:
        typer.echo(json.dumps(answer.to_json()))
        return
    for result in per_query:
        table = display.people_query_table(result, answer.people) if answer.people else display.query_table(result)
        display.stdout.print(table)


@command("serve")
def serve(
    gallery: Annotated[
        Path, typer.Option("--gallery", "-g", help="The gallery (tfclip index) to search and extend.",
                           exists=True, dir_okay=False)
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on; beyond loopback a --token is needed.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", "-c", help="Checkpoint, or its exported .onnx file (run by onnxruntime: torch "
                     "is never imported), to embed with; default: the one recorded in the gallery.",
                     exists=True, dir_okay=False),
    ] = None,
    token: Annotated[
        Optional[str],
        typer.Option("--token", envvar="TFCLIP_SERVE_TOKEN", help="Bearer token the write endpoints require.",
                     show_default=False),
    ] = None,
    allow_dirs: Annotated[
        Optional[list[Path]],
        typer.Option("--allow-dir", help="A server folder whose clips POST /gallery may name by path (repeatable).",
                     exists=True, file_okay=False),
    ] = None,
    store: Annotated[
        Optional[Path],
        typer.Option("--store", help="Folder keeping clips uploaded to the gallery; default: GALLERY.clips beside it.",
                     file_okay=False),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest upload (413 above).")]
    = 200.0,
    max_frames: Annotated[int, typer.Option("--max-frames", min=1, help="Most frames in one clip (413 above).")]
    = 5000,
    detector: QueryDetectorOpt = QUERY_DETECTOR,
    allow_hosts: Annotated[
        Optional[list[str]],
        typer.Option("--allow-host", help="Another host name requests may use, e.g. a reverse proxy's (repeatable); "
                     "--host (and for loopback, localhost) is always one.", show_default=False),
    ] = None,
    watch_sources: Annotated[
        Optional[Path],
        typer.Option("--watch", help="A streams.yaml: ingest its cameras into the gallery while serving (as tfclip "
                     "watch); /stats then shows the ingest figures.", exists=True, dir_okay=False),
    ] = None,
) -> None:
    """Serve a gallery over HTTP: a search API (person crops and footage), live additions and removals, and a web
    page at /.

    Example: tfclip serve --gallery runs/mars/gallery.faiss --host 127.0.0.1 --port 8000
    """
    from tfclip_cli.serve.app import serve as run_service
    from tfclip_cli.serve.service import ServeConfig
    from tfclip_cli.serve.uploads import UploadLimits
    from tfclip_cli.watch.sources import read_sources

    config = ServeConfig(
        gallery=gallery, checkpoint=checkpoint, device=None,
        limits=UploadLimits(max_bytes=int(max_upload_mb * 2**20), max_frames=max_frames),
        allow_dirs=tuple(allow_dirs or ()), store=store or gallery.with_name(gallery.name + ".clips"),
        detector=detector, watch=tuple(read_sources(watch_sources)) if watch_sources is not None else (),
    )
    display.stderr.print(f"loading {gallery}; the page will be at http://{host}:{port}/", highlight=False)
    run_service(config, host=host, port=port, token=token, allow_hosts=tuple(allow_hosts or ()))


@command("export")
def export(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="fp16 weights for GPU runtimes (verified to a looser tolerance).")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Compare with PyTorch on random clips; keep the file only if equal."),
    ] = True,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="int8 weights for CPUs (onnxruntime dynamic quantisation); records its cosine to "
                     "fp32 and refuses a mAP drop over 1 point on --check-on unless --force."),
    ] = False,
    check_on: Annotated[
        Optional[Path],
        typer.Option("--check-on", exists=True, dir_okay=False,
                     help="With --int8: a manifest or embeddings table whose query/gallery tracklets measure the mAP "
                     "and rank-1 of fp32 and int8."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing output; with --int8, keep it whatever its mAP drop.")
    ] = False,
) -> None:
    """Export a checkpoint's test-time embedding to one ONNX file that carries its metadata, checked against PyTorch.

    Example: tfclip export --checkpoint runs/mars-tfclip/best.ckpt --out runs/mars-tfclip/model.onnx

    Example (int8, accuracy measured): tfclip export -c best.ckpt --out model-int8.onnx --int8 --check-on mars.parquet
    """
    from rich.table import Column, Table

    from tfclip_cli.export import VerificationError, export_checkpoint
    from tfclip_cli.quantize import export_int8
    from tfclip_cli.runtime import describe

    if int8 and (fp16 or not verify):
        raise typer.BadParameter("--int8 quantises a verified fp32 export: leave out --fp16 and --no-verify")
    if check_on is not None and not int8:
        raise typer.BadParameter("--check-on measures an int8 export: add --int8")
    try:
        if int8:
            result = export_int8(checkpoint, out, check_on=check_on, force=force)
        else:
            result = export_checkpoint(checkpoint, out, precision="fp16" if fp16 else "fp32", verify=verify,
                                       force=force)
    except VerificationError as error:
        display.stderr.print(f"[bold red]verification failed:[/] {escape(str(error))}; {out} not written",
                             highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table("metadata", Column("value", overflow="fold"), title=display.plain_text(out), title_justify="left")
    for key, value in describe(result.metadata).items():
        table.add_row(key, value)
    check = result.verification
    table.add_row("verified", "skipped (--no-verify)" if check is None else (
        f"{check.num_clips} random clips: max abs diff {check.max_abs_diff:.2g} (<= {check.tolerance.max_abs_diff:g}),"
        f" min cosine {check.min_cosine:.6f} (>= {check.tolerance.min_cosine:g})"))
    if int8:
        _add_int8_rows(table, result)
    display.stdout.print(table)


def _add_int8_rows(table: "Table", result: "Int8Export") -> None:
    """The int8 figures of ``tfclip export --int8``: cosine to fp32, and retrieval of both when checked."""
    agreement = result.agreement
    table.add_row("int8 vs fp32", f"{agreement.num_clips} random clips: min cosine {agreement.min_cosine:.6f}, "
                  f"mean {agreement.mean_cosine:.6f}")
    check = result.check
    if check is not None:
        table.add_row("retrieval", f"{escape(str(check.table))} ({check.num_query} queries, "
                      f"{check.num_gallery} gallery): mAP fp32 {100 * check.fp32.mAP:.2f}% / int8 "
                      f"{100 * check.int8.mAP:.2f}%, rank-1 fp32 {100 * check.fp32.rank1:.2f}% / int8 "
                      f"{100 * check.int8.rank1:.2f}%")


def _status_line(figures) -> str:
    lag = ("-" if figures.lag_p50_s is None
           else f"{figures.lag_p50_s:.1f}/{figures.lag_p95_s:.1f}s")
    return (f"{figures.name} (camera {figures.camera}) {figures.state}: read {figures.frames_read}, processed "
            f"{figures.frames_processed}, dropped {figures.frames_dropped}, reconnects {figures.reconnects}, open "
            f"tracks {figures.open_tracks}, appended {figures.tracklets_appended}, lag p50/p95 {lag}")


@command("watch")
def watch(
    sources: Annotated[
        Optional[list[str]],
        typer.Argument(help="Video files, folders (new files are picked up), stream URLs (rtsp://, http(s)://, "
                       "udp://) or webcam indices.", show_default=False),
    ] = None,
    gallery: Annotated[
        Path, typer.Option("--gallery", "-g", help="The gallery to append to; created when missing.", dir_okay=False)
    ] = ...,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="A tfclip checkpoint (.ckpt) or an exported .onnx model; the "
                           "gallery's own when it exists.", exists=True, dir_okay=False)
    ] = ...,
    sources_file: Annotated[
        Optional[Path],
        typer.Option("--sources", help="A streams.yaml naming the cameras (id, name, url, clock).", exists=True,
                     dir_okay=False),
    ] = None,
    fps: Annotated[float, typer.Option("--fps", min=0.1, help="Frames per second processed per source.")] = 5.0,
    detector: Annotated[
        str, typer.Option("--detector", help="As tfclip track: auto, ssdlite, hog, a YOLO .onnx file, or gt:PATH.")
    ] = "auto",
    min_frames: Annotated[
        int, typer.Option("--min-frames", min=1, help="Append only tracklets of at least this many frames.")
    ] = 8,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", min=1.0, help="A tracklet this long is cut and goes on as a new one.")
    ] = 60.0,
    retries: Annotated[
        Optional[int], typer.Option("--retries", min=0, help="Give a stream up after this many failed reconnections "
                                    "in a row; default: keep trying.")
    ] = None,
    state: Annotated[
        Optional[Path], typer.Option("--state", dir_okay=False, help="The file recording the folders' files done; "
                                     "default: GALLERY.watch.json.")
    ] = None,
    json_status: Annotated[
        Optional[Path], typer.Option("--json-status", dir_okay=False,
                                     help="Write the status figures to this JSON file every few seconds.")
    ] = None,
) -> None:
    """Watch cameras (files, folders, streams, webcams) and append each person's tracklet to the gallery within
    seconds of them leaving the view, until the sources end, Ctrl-C or SIGTERM.

    Example: tfclip watch rtsp://10.0.0.5/stream1 /srv/nvr/door/ --gallery live.faiss -c runs/mars/best.ckpt
    """
    import dataclasses

    from tfclip_cli.footage.pipeline import PipelineOptions
    from tfclip_cli.footage.tracklets import camid_from_name
    from tfclip_cli.watch.ingest import WatchOptions, watch as run_watch
    from tfclip_cli.watch.sources import ReaderOptions, make_source, read_sources

    specs = read_sources(sources_file) if sources_file is not None else []
    taken = {spec.camera for spec in specs}
    for location in sources or []:
        camera = camid_from_name(Path(location)) if "://" not in location else None
        if camera is None or camera in taken:
            camera = next(number for number in range(len(taken) + 1) if number not in taken)
        taken.add(camera)
        specs.append(make_source(location, camera=camera))
    if not specs:
        raise UserError("nothing to watch: name sources (files, folders, stream URLs, webcams) or --sources FILE")
    options = WatchOptions(
        detector=detector, pipeline=dataclasses.replace(PipelineOptions(), min_frames=min_frames),
        reader=ReaderOptions(fps=fps, retries=retries), max_seconds=max_seconds,
        state=state, json_status=json_status)
    for spec in specs:
        display.stderr.print(f"watching {spec.name} (camera {spec.camera}, {spec.kind}, clock {spec.clock})",
                             highlight=False)

    def report(status) -> None:
        for figures in status.sources:
            display.stderr.print(_status_line(figures), highlight=False, soft_wrap=True)

    final = run_watch(specs, gallery, checkpoint, options, report=report)
    appended = sum(figures.tracklets_appended for figures in final.sources)
    display.stderr.print(f"done: {appended} tracklet(s) appended to {gallery}", highlight=False)


@command("track")
def track(
    videos: Annotated[list[Path], typer.Argument(help="Camera videos to cut into person tracklets.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Root of the tracklet folders (read by prepare footage).", file_okay=False),
    ],
    every: Annotated[
        int, typer.Option("--every", min=1, help="Detect on every K-th frame; predict boxes between.")
    ] = 1,
    min_frames: Annotated[
        int, typer.Option("--min-frames", min=1, help="Write only tracklets of at least this many frames.")
    ] = 8,
    camid: Annotated[
        Optional[int],
        typer.Option(
            "--camid", min=0, help="Camera of every video; default: from names like cam2_x.mp4 or cam2/x.mp4."
        ),
    ] = None,
    detector: Annotated[
        str,
        typer.Option(
            "--detector", help="auto (ssdlite if installed, else hog), ssdlite, hog, or a YOLO v5/v8/11 .onnx file; "
            "gt replays the MOTChallenge gt.txt beside each video with a detector's faults (synthetic footage)."
        ),
    ] = "auto",
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(
            "--checkpoint", "-c", exists=True, dir_okay=False,
            help="Cut and re-link tracks by appearance with this checkpoint; default: motion only.",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Videos processed at once, one process each.")
    ] = 1,
    keep_static: Annotated[
        bool, typer.Option("--keep-static", help="Keep tracklets whose box never moves (a person standing still the "
                           "whole time); by default they are dropped as detector false positives, and counted.")
    ] = False,
    start_time: Annotated[
        Optional[list[str]],
        typer.Option("--start-time", metavar="[VIDEO=]TIME",
                     help="When a video's first frame was filmed (ISO 8601, UTC unless a zone is given), repeatable; "
                     "default: a YYYYMMDDTHHMMSS stamp in its name (cam2_20261203T120000.mp4), else the file's "
                     "creation time. Linking people across cameras needs it."),
    ] = None,
    json_output: JsonOpt = False,
    force: ForceOpt = False,
    annotate: Annotated[
        Optional[Path],
        typer.Option("--annotate", help="Also write the video with each tracklet's box, id and trail drawn, as .mp4 "
                     "(H.264) or .webm (VP9); one input video.", dir_okay=False),
    ] = None,
) -> None:
    """Detect and track the people in camera videos and write each track as a tracklet of cropped frames.

    Example: tfclip track cam1_lobby.mp4 cam2_street.mp4 --out footage/
    """
    import dataclasses
    import json

    from tfclip_cli.footage.clock import parse_start_options
    from tfclip_cli.footage.pipeline import PipelineOptions
    from tfclip_cli.footage.tracklets import TrackOptions, track_videos

    if annotate is not None:
        _check_annotation(videos, annotate, force=force)
    pipeline = PipelineOptions(every=every, min_frames=min_frames, keep_static=keep_static)
    options = TrackOptions(detector=detector, checkpoint=checkpoint, pipeline=pipeline,
                           start_times=parse_start_options(start_time or [], videos))
    summary = track_videos(videos, out, options=options, camid=camid, workers=workers, force=force)
    if not display.is_main_process():
        return
    if annotate is not None:
        _annotate_tracking(videos[0], Path(summary.videos[0].folder), annotate, force=force)
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(summary)))
        return
    display.stdout.print(display.tracking_table(summary))
    manifest = out.with_name(f"{out.name}.parquet")
    display.stderr.print(f"next: tfclip prepare footage {out} --out {manifest}", highlight=False)


@command("evaluate-tracks")
def evaluate_tracks(
    result: Annotated[
        Path,
        typer.Argument(help="The tracks: an AI City file, a folder of MOTChallenge files (<camera>.txt) or a tfclip "
                       "track --out folder.", exists=True),
    ],
    gt: Annotated[
        Path,
        typer.Option("--gt", help="The ground truth: an AI City file or a folder of MOTChallenge files "
                     "(<camera>/gt/gt.txt, <camera>/gt.txt or <camera>.txt).", exists=True),
    ],
    json_output: JsonOpt = False,
    annotate: Annotated[
        Optional[Path],
        typer.Option("--annotate", help="Also draw one camera's ground truth and tracks side by side, identity "
                     "switches marked, into this .mp4 or .webm; the camera is the one --video films.",
                     dir_okay=False),
    ] = None,
    video: Annotated[
        Optional[Path],
        typer.Option("--video", help="With --annotate: the camera's video, named by its number (cam2.mp4).",
                     exists=True, dir_okay=False),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --annotate video.")] = False,
) -> None:
    """Score tracks against ground truth: MOTA, IDF1, ID switches, HOTA per camera; multi-camera IDF1 and HOTA.

    Ids are global across cameras; the network is scored as one sequence, every camera's frames one after another.

    Example: tfclip evaluate-tracks tracked/ --gt data/footage/footage --annotate cam0-check.mp4 --video cam0.mp4
    """
    import dataclasses
    import json

    from tfclip_cli.footage import metrics

    if (annotate is None) != (video is None):
        raise UserError("--annotate and --video go together: the video to draw on, and where to write it")
    evaluation = metrics.evaluate_tracks(result, gt)
    if annotate is not None:
        from tfclip_cli.footage.annotate import annotate_camera

        drawn = annotate_camera(result, gt, video, annotate, force=force)
        display.stderr.print(display.plain_text(f"wrote {drawn.path} ({drawn.frames} frames, {drawn.codec})"))
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(evaluation)))
    else:
        display.stdout.print(display.track_scores_table(evaluation, display.plain_text(f"{result} against {gt}")))


@command("report")
def report(
    run: Annotated[Path, typer.Argument(help="A run folder of tfclip train (its run.output_dir).", exists=True,
                                        file_okay=False)],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Where to write the page; default: RUN/report.html.",
                                     dir_okay=False)
    ] = None,
) -> None:
    """Draw a training run's report (loss parts, learning rate, mAP and rank-1 per epoch) from its metrics.csv.

    Example: tfclip report runs/mars
    """
    from tfclip_cli.report.training import write_run_report

    display.stderr.print(display.plain_text(f"wrote {write_run_report(run, out)}"))


def _check_annotation(videos: list[Path], annotate: Path, *, force: bool) -> None:
    """``tfclip track --annotate``: one video, and a file that can be written, checked before tracking."""
    from tfclip_cli.footage.annotate import check_output

    if len(videos) != 1:
        raise UserError(f"--annotate draws one video; {len(videos)} were given", hint="track them one at a time")
    check_output(annotate, force=force)


def _annotate_tracking(video: Path, folder: Path, annotate: Path, *, force: bool) -> None:
    """Draw the tracklets just written for ``video`` (in ``folder``) onto it."""
    from tfclip_cli.footage.annotate import annotate_video, read_written_tracks

    result = annotate_video(video, read_written_tracks(folder), annotate, force=force)
    display.stderr.print(display.plain_text(f"wrote {result.path} ({result.frames} frames, {result.codec})"))


class ExportLayout(str, Enum):
    aicity = "aicity"
    mot = "mot"


@command("link")
def link(
    embeddings: Annotated[
        Path, typer.Argument(help="Embeddings of footage tracklets (tfclip extract).", exists=True, dir_okay=False)
    ],
    out: OutOpt,
    cameras: Annotated[
        Optional[Path],
        typer.Option("--cameras", exists=True, dir_okay=False,
                     help="Camera graph (cameras.yaml): links between cameras, transit seconds min_s/max_s, which "
                     "views overlap. Without it only the same-camera and one-place-at-a-time rules apply."),
    ] = None,
    gallery: Annotated[
        Optional[Path],
        typer.Option("--gallery", "-g", exists=True, dir_okay=False,
                     help="Also write the person ids into this gallery's rows (tfclip query then answers with people)."),
    ] = None,
    threshold: Annotated[
        Optional[float],
        typer.Option("--threshold", help="Mean cosine similarity two groups need to become one person "
                     "(default 0.4, or calibrated with --labelled)."),
    ] = None,
    labelled: Annotated[
        Optional[Path],
        typer.Option("--labelled", exists=True, dir_okay=False,
                     help="Labelled embeddings to calibrate the threshold on (at a false-match rate of 1%)."),
    ] = None,
    onto: Annotated[
        Optional[Path],
        typer.Option("--onto", exists=True, dir_okay=False,
                     help="An earlier output of tfclip link: keep its people and link only the new tracklets onto "
                     "them (or start new people), without re-clustering."),
    ] = None,
    export_path: Annotated[
        Optional[Path],
        typer.Option("--export", help="Also write every linked box with its person id: one file (aicity) or a "
                     "folder of cam<N>.txt (mot)."),
    ] = None,
    export_format: Annotated[
        ExportLayout, typer.Option("--format", help="Layout of --export: aicity or mot (MOTChallenge).")
    ] = ExportLayout.aicity,
    json_output: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Link footage tracklets into people across cameras and time, each with a timeline of camera visits.

    Example: tfclip link tracked-emb.parquet --cameras data/net/footage/cameras.yaml --gallery tracked.faiss --out people.parquet
    """
    import dataclasses
    import json

    from tfclip_cli.people.link import LinkRequest, link_file

    summary = link_file(LinkRequest(
        embeddings=embeddings, out=out, cameras=cameras, gallery=gallery, threshold=threshold, labelled=labelled,
        onto=onto, export=export_path, export_format=export_format.value, force=force,
    ))
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(summary)))
        return
    display.stdout.print(display.link_table(summary))
    display.stderr.print(display.plain_text(f"wrote {out}"))


@command("demo")
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo's data, run, index and report.", file_okay=False)
    ] = Path("tfclip-demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer identities, shorter tracklets, fewer epochs: about 2 minutes.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete an earlier demo in --out and start over.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an earlier demo in --out, reusing its finished steps.")
    ] = False,
) -> None:
    """Run the whole pipeline on synthetic data: train, evaluate, index, query, then follow a walker across cameras.

    Example: tfclip demo --out tfclip-demo --quick
    """
    from tfclip_cli.demo import run_demo

    if force and resume:
        raise UserError("--force starts over and --resume continues: pass one of them")
    result = run_demo(out, quick=quick, if_exists="force" if force else "resume" if resume else "refuse")
    display.stdout.print(display.demo_summary(result))


@command("compare")
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders written by tfclip train (run.output_dir).", exists=True,
                                   file_okay=False)
    ],
    json_output: JsonOpt = False,
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Also write an HTML page with a bar chart per score.",
                                     dir_okay=False)
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Compare training runs: differing recipe keys, best/last mAP, rank-1, mINP per test set, epochs, time, size.

    Runs that differ only in run.seed are one row (mean ± std); an unfinished run shows its latest evaluation.

    Example: tfclip compare runs/ablations/* --html runs/ablations.html
    """
    import json

    from rich.table import Table

    from tfclip_cli.compare import cells, compare_runs, headers

    if html is not None:
        from tfclip_cli.tables import check_writable

        check_writable(html, force=force)
    comparison = compare_runs(runs)
    if html is not None:
        from tfclip_cli.report.compare import write_compare_html

        write_compare_html(comparison, html, force=force)
        display.stderr.print(display.plain_text(f"wrote {html}"))
    if json_output:
        typer.echo(json.dumps(comparison.to_dict()))
        return
    table = Table(*headers(comparison), title="runs (scores in %; * unfinished)", title_justify="left")
    for row in comparison.rows:
        table.add_row(*(display.plain_text(cell) for cell in cells(comparison, row)))
    display.stdout.print(table)


@command("inspect-memory")
def inspect_memory(
    checkpoint: Annotated[
        Path, typer.Argument(help="A tfclip checkpoint with a CLIP-Memory.", exists=True, dir_okay=False)
    ],
    clip_weights: Annotated[
        Optional[Path],
        typer.Option("--clip-weights", help="Full CLIP weights with the text tower (e.g. OpenAI's ViT-B-16.pt): "
                     "also compare the memory with CLIP's text embeddings of person prompts.", exists=True,
                     dir_okay=False),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Measure a checkpoint's CLIP-Memory: norms, cosine between identities, and cosine to CLIP's text embeddings.

    Example: tfclip inspect-memory runs/mars-tfclip/best.ckpt --clip-weights ViT-B-16.pt
    """
    import dataclasses
    import json

    from tfclip_cli.alignment import inspect_memory as inspect

    result = inspect(checkpoint, clip_weights=clip_weights)
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(result), default=str))
        return
    display.stdout.print(display.memory_table(result))


def main() -> None:
    """Entry point of the `tfclip` console script and of `python -m tfclip_cli`."""
    app()
