"""Checks every HTML report test shares: a whole document, balanced tags, nothing loaded that does not exist."""

import re
from html.parser import HTMLParser
from pathlib import Path


class _Page(HTMLParser):
    """Every start tag, the URLs the page loads, and whether each tag was closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "path", "use", "stop", "rect", "circle", "line", "polyline",
            "polygon", "ellipse"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.sources: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.sources += [value for name, value in attrs if name in ("src", "href", "xlink:href") and value]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.sources += [value for name, value in attrs if name in ("src", "href", "xlink:href") and value]

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()


def check_page(path: Path) -> _Page:
    """Assert ``path`` is a whole HTML document, its tags balanced, every resource it loads embedded or a file
    that exists beside it; return what it holds."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = _Page()
    page.feed(text)
    page.close()
    assert not page.errors and not page.open, (page.errors, page.open)
    for source in page.sources:
        if source.startswith(("data:", "#")):
            continue
        assert not re.match(r"[a-z]+:", source), f"{source}: a report loads nothing from the network"
        assert (path.parent / source).is_file(), f"{source} does not exist beside {path}"
    return page
