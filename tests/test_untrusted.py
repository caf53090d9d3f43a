"""The escaping helpers (mlprof.untrusted), checked by real renderers: rich, a CommonMark/GFM parser, an HTML parser."""

from __future__ import annotations

import io
import time
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt
from rich.console import Console
from rich.table import Table

from mlprof.untrusted import html_text, md_code, md_text, plain, term, term_line

# One name carrying every trick the issue saw in real traces and users' run names.
HOSTILE = (
    "[/red][bold]x[/bold] cpu:-1 :thumbs_up: \x1b[31mRED\x1b[0m \x1b]0;title\x07 a|b\nc # INJECTED "
    "![img](http://example.com/b.png) [link](http://e.com) <script>alert(1)</script> &amp; *em* _u_ "
    "`tick` ~~s~~ $x^2$ :red[colour] www.example.com \u202eevil\u202c \x00\x07\x7f\x9b2J \ud800 end"
)
VISIBLE_WORDS = ["[/red]", "cpu:-1", ":thumbs_up:", "RED", "a|b", "c # INJECTED", "<script>", "&amp;", "end"]


def test_plain_removes_controls_and_escapes_only():
    out = plain(HOSTILE)
    assert out.isprintable()
    assert "\x1b" not in out and "title" not in out  # the OSC title sequence goes whole
    for word in VISIBLE_WORDS:
        assert word in out
    assert "\ufffd" in out  # the lone surrogate, so that the text can be written as UTF-8
    out.encode("utf-8")
    assert plain("aten::mm") == "aten::mm"
    assert plain("x" * 10, max_chars=5) == "xxxx…"


def _rich(renderable: object) -> str:
    buf = io.StringIO()
    Console(file=buf, width=4000, color_system=None, legacy_windows=False).print(renderable)
    return buf.getvalue()


def test_term_is_literal_in_rich():
    line = _rich(term(HOSTILE))
    assert plain(HOSTILE) in line  # every character as written: no markup, no emoji, no escape
    assert "👍" not in line and "\x1b" not in line
    table = Table()
    table.add_column("name")
    table.add_row(term("[/red] cpu:-1:"))
    assert "[/red] cpu:-1:" in _rich(table)
    mixed = _rich(term_line(("mlprof analyze", "bold"), " ", "[/red]:-1:"))
    assert "mlprof analyze [/red]:-1:" in mixed


def test_term_is_linear_in_name_length():
    # rich's markup and highlighter regexes took 3.6 s for a 20 KB name; a Text of 1 MB prints at once
    name = "k" * 1_000_000
    start = time.perf_counter()
    _rich(term(name))
    assert time.perf_counter() - start < 20  # generous: quadratic would be hours


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html_source: str) -> _Collect:
    p = _Collect()
    p.feed(html_source)
    p.close()
    return p


def _markdown(source: str) -> _Collect:
    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    return _parse(md.render(source))


def test_md_text_renders_literally():
    doc = _markdown(md_text(HOSTILE))
    assert doc.tags == ["p"]  # no heading, link, image, emphasis, code, strikethrough or raw HTML
    assert "".join(doc.text).strip() == plain(HOSTILE)
    for start in ("1. x", "3) x", "- x", "+ x", "* x", "> x", "    x", "= x", "--- x", "<div>x</div>"):
        doc = _markdown(md_text(start))
        assert doc.tags == ["p"] and "".join(doc.text).strip() == start.strip(), start
    assert "www\\." in md_text("see www.example.com")  # GFM autolink literal broken


def test_md_in_a_table_keeps_the_columns():
    row = f"| {md_text(HOSTILE)} | {md_code(HOSTILE)} | 3 |"
    doc = _markdown("| a | b | c |\n|---|---|---|\n" + row + "\n")
    assert doc.tags.count("td") == 3 and doc.tags.count("tr") == 2
    assert "a" not in doc.tags and "img" not in doc.tags and "h1" not in doc.tags
    cells = "".join(doc.text)
    assert plain(HOSTILE) in cells


@pytest.mark.parametrize("name", ["aten::mm", "a`b", "``x``", "`", "", "   ", "a|b"])
def test_md_code_round_trips(name):
    doc = _markdown(md_code(name, table=False))
    if not name.strip():
        return  # an empty or blank span: nothing to show, only that it parsed
    assert "code" in doc.tags
    assert "".join(doc.text).strip("\n") == name


def test_html_text_is_inert():
    doc = _parse(f'<p title="{html_text(HOSTILE)}">{html_text(HOSTILE)}</p>')
    assert doc.tags == ["p"]
    assert "".join(doc.text) == plain(HOSTILE)
