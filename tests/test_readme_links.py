"""Every relative link in the three READMEs points at a file that exists, and every anchor at a
heading of its target: the documentation beside the code cannot point into the void."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

READMES = ["README.md", "DecodingMethodsModels/README.md", "evals/README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(markdown: str) -> str:
    """The text outside fenced code blocks (a link in a code block is code, not a link)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", prose(path.read_text()), flags=re.M)
    return {slug(h) for h in headings}


def relative_links(readme: Path) -> list[str]:
    return [t for t in LINK.findall(prose(readme.read_text()))
            if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto: are not checked here


@pytest.mark.parametrize("name", READMES)
def test_every_relative_link_resolves(name):
    readme = ROOT / name
    links = relative_links(readme)
    assert links, f"{name} links nowhere"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (readme.parent / target).resolve() if target else readme
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{name}: " + "; ".join(broken)


def test_the_top_readme_links_every_package_readme_and_the_differences_table():
    links = set(relative_links(ROOT / "README.md"))
    assert {"DecodingMethodsModels/README.md", "evals/README.md"} <= links
    assert "DecodingMethodsModels/README.md#differences-from-the-reference-code" in links


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) [bad anchor](#nowhere)\n"
                    "```\n[in code](not/checked.md)\n```\n")
    assert relative_links(page) == ["#top", "missing.md", "#nowhere"]
    assert "top" in anchors(page) and "nowhere" not in anchors(page)
