"""The package stands on its own: the README and docs/ point only at files in the repository
(a clone has no ../shared), and the README keeps its two-command start."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_references_outside_the_repository() -> None:
    for p in docs():
        text = p.read_text()
        assert "../shared" not in text and "/work/" not in text, p


def test_every_linked_or_named_doc_exists() -> None:
    for p in docs():
        text = p.read_text()
        for target in re.findall(r"\]\(([^)#:]+)\)", text):  # markdown links, not URLs
            assert (p.parent / target).exists(), (p, target)
        for name in re.findall(r"`(docs/[\w.-]+\.md)`", text):
            assert (ROOT / name).exists(), (p, name)
    for name in ("formats.md", "design.md", "api.md", "core-api.md"):
        assert (ROOT / "docs" / name).exists(), name


def test_readme_starts_with_exactly_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    fence = lines.index("```sh")
    block = lines[fence + 1:lines.index("```", fence + 1)]
    assert [x.split()[:2] for x in block] == [["make", "run"], ["make", "test"]]


def test_readme_lists_every_ci_package() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    packages = re.search(r"APT_PACKAGES=\((.*?)\n\)", ci, re.S)
    assert packages is not None
    names = {w for line in packages.group(1).splitlines()
             for w in line.split("#")[0].split() if w != "libssl-dev"}
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in sorted(names) if f"`{n}`" not in readme]
    assert not missing, missing
