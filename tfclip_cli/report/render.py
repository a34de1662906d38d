"""Fill the report templates (Jinja2, ``templates/``) and write the page: one self-contained HTML file, figures as
inline SVG and thumbnails as base64 JPEG, so a report can be mailed or opened anywhere."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image

from tfclip_cli.tables import atomic_output

THUMBNAIL_SIZE = (128, 128)
"""Largest thumbnail (width, height) in a report; frames keep their aspect ratio."""

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("tfclip_cli.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def jpeg_data_uri(frame: np.ndarray, *, size: tuple[int, int] = THUMBNAIL_SIZE) -> str:
    """A uint8 ``[H, W, 3]`` frame as a ``data:`` URI holding a JPEG thumbnail at most ``size`` (width, height)."""
    image = Image.fromarray(frame).convert("RGB")
    image.thumbnail(size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def inline_svg(text: str) -> Markup:
    """An SVG drawn by :mod:`tfclip_cli.report.plots`, marked safe to place in a page as it is."""
    return Markup(text)


def render(template: str, **context: object) -> str:
    """The page ``templates/<template>`` filled with ``context`` (every value escaped unless marked safe)."""
    return _ENVIRONMENT.get_template(template).render(**context)


def write_page(page: str, out: Path, *, force: bool = True) -> Path:
    """Write ``page`` to ``out`` atomically (a report is derived: it is replaced unless ``force`` is False)."""
    with atomic_output(Path(out), force=force) as temp:
        temp.write_text(page, encoding="utf-8")
    return Path(out)
