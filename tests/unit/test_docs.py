"""The documentation stays in the repository's own shape.

- No file of the package, the plugins, the docs, the benchmark or the contract cites notes that live
  outside the repository (section numbers, source tags); a comment names the public source instead
  (for example "Dotdigital API docs" or https://docs.commercetools.com/api/).
- The README stays short and keeps the two commands.
- Every relative link of the README and of docs/ points at a file that exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Where citations of notes outside the repository must not appear.
CHECKED = ("service", "plugins", "docs", "bench", "proto", "README.md")
#: Generated or binary content that is not written by hand.
SKIPPED_PARTS = {"__pycache__"}
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".proto", ".toml", ".txt", ".mako", ".ini", ".cfg", ".yaml", ".yml", ""}

CITATIONS = [
    (re.compile(r"§\s?\d"), "a section number (§n)"),
    (re.compile(r"\[SPEC-"), "a [SPEC-...] source tag"),
    (re.compile(r"\[M\d+\]"), "an [Mn] source tag"),
    (re.compile(r"engineering notes", re.IGNORECASE), "the engineering notes"),
]

README_MAX_LINES = 260

#: ``[text](target)`` and ``[text]: target``; images and autolinks need no special case here.
_INLINE_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def _checked_files() -> list[Path]:
    files: list[Path] = []
    for name in CHECKED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(ROOT)
            if not file.is_file() or SKIPPED_PARTS & set(rel.parts[:-1]):
                continue
            if name == "service" and rel.parts[:2] == ("service", "sync"):
                continue
            if file.suffix in TEXT_SUFFIXES:
                files.append(file)
    return files


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_citations_of_notes_outside_the_repository():
    problems = []
    for file in _checked_files():
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for pattern, what in CITATIONS:
                if pattern.search(line):
                    problems.append(f"{file.relative_to(ROOT)}:{number}: {what}: {line.strip()[:120]}")
    assert not problems, "cite the public source by name instead:\n" + "\n".join(problems)


def test_the_citation_patterns_catch_what_they_should():
    def cited(line: str) -> bool:
        return any(pattern.search(line) for pattern, _ in CITATIONS)

    assert cited("see reference §4.4") and cited("[SPEC-C3] pattern") and cited("([M2]'s list)")
    assert cited("Shutdown order (Engineering notes 2.3)")
    assert not cited("RFC 9110, section 10.2.3") and not cited("lists [M] and [MX]") and not cited("§ alone")


def test_readme_is_short_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "scripts/serve" in text
    assert "scripts/test" in text


def _relative_links(text: str) -> list[str]:
    text = _CODE.sub("", text)
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(doc: Path):
    missing = []
    for target in _relative_links(doc.read_text(encoding="utf-8")):
        path = unquote(target.split("#", 1)[0])
        if not path:
            continue
        if not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_finder_sees_links_and_skips_urls_and_code():
    text = "[a](docs/x.md) [b](https://example.com) [c](#anchor) `[d](nope.md)` [e](y.md#part)\n[f]: z.md\n"
    assert _relative_links(text) == ["docs/x.md", "y.md#part", "z.md"]
