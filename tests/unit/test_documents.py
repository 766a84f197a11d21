"""The repository's documents stand on their own: every relative link of README.md and
docs/*.md names a file (and heading) of this repository, and none points outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out: set[str] = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    assert "SPEC.md" not in text and "../shared" not in text
    links = LINK.findall(text)
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue  # an absolute URL (none is needed to read these documents)
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.is_relative_to(ROOT), link
        assert path.exists(), f"{document.name}: {link}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{document.name}: {link}"


def test_the_readme_lists_the_documents() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("protocol.md", "auth.md", "events.md", "choices.md"):
        assert f"(docs/{name})" in readme, name
