"""The README is the front door: its CLI table is the parser's, every preset it names exists, and the
licence and citation files it points to are there."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from qkv.cli import COMMANDS, build_parser, synopsis, verb_parser
from qkv.recipes import RECIPES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def table_commands() -> list[str]:
    """The first cells of the README's CLI table that hold a `qkv …` command, with `\\|` unescaped."""
    section = README[README.index("## CLI reference") : README.index("### Configuration")]
    cells = re.findall(r"^\| `(qkv [^`]*)` \|", section, flags=re.M)
    return [c.replace("\\|", "|") for c in cells]


def test_the_cli_table_is_the_parser():
    """One row per verb, and each row's command is exactly that verb's synopsis (names, metavars, order)."""
    assert table_commands() == [synopsis(verb_parser(name)) for name in COMMANDS]


def test_qkv_help_lists_the_same_synopses():
    text = build_parser().format_help()
    for name in COMMANDS:
        assert f"  {synopsis(verb_parser(name))}\n" in text


def test_every_verb_has_examples_and_help_for_each_argument():
    for name in COMMANDS:
        p = verb_parser(name)
        assert "example" in (p.epilog or "")
        assert all(a.help for a in p._actions), name


def test_every_preset_the_readme_names_exists():
    named = set(re.findall(r"qkv train ([a-z][\w-]*)", README))
    presets_line = re.search(r"Presets: (.*?)\. ", README).group(1)
    named |= set(re.findall(r"`([\w-]+)`", presets_line))
    sizes = README[README.index("## Model sizes") : README.index("## Measured results")]
    named |= set(re.findall(r"^\| `([\w-]+)`", sizes, flags=re.M))
    assert named and named <= set(RECIPES), named - set(RECIPES)
    assert set(re.findall(r"`([\w-]+)`", presets_line)) == set(RECIPES)  # and the list is complete


def test_licence_and_citation():
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert any(r["title"] == "Attention Is All You Need" and r["year"] == 2017 for r in cff["references"])
    import qkv

    assert cff["version"] == qkv.__version__


def test_every_link_within_the_readme_names_one_of_its_headings():
    """A `](#anchor)` link resolves to a heading's anchor as GitHub makes it (lowercase, punctuation dropped,
    spaces to hyphens)."""
    headings = re.findall(r"^#+ (.+)$", README, flags=re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links and links <= anchors, links - anchors
