"""Text from traces and users, shown literally in every output.

Kernel names, op names, device names, file paths, run names and tags come from
traces and from users. None of it may take effect as markup in the output it is
shown in: no rich markup or emoji codes in the terminal (``[/red]`` in a name
crashed the text report, ``cpu:-1`` printed a thumbs-down), no ANSI escapes or
control characters reaching a terminal or a file, no markdown headings, links,
images or broken tables, no HTML. One helper per output, applied where the
output is made (renderers, dashboard views, the ``mlprof runs`` table):

=====================  ===============================================================
output                 helper
=====================  ===============================================================
any (first step)       :func:`plain`: one line, no control characters or ANSI escapes
rich terminal          :func:`term` (a ``rich.text.Text``: no markup, no emoji, no
                       highlighting) for table cells and ``console.print``;
                       :func:`term_line` to join mlprof's own styled words with
                       untrusted text
markdown (report,      :func:`md_code` for names and paths (a code span; ``|`` escaped
PR comments)           for tables), :func:`md_text` for prose that embeds names
HTML                   :func:`html_text` (also for plotly hover text and labels)
Streamlit              ``st.text``/``st.code``/dataframes take :func:`plain`;
                       ``st.markdown``, ``st.caption``, headers and widget labels
                       take :func:`md_text` or :func:`md_code` (Streamlit markdown
                       also reads ``:emoji:``, ``:red[..]`` and ``$math$``, which
                       :func:`md_text` escapes)
=====================  ===============================================================

JSON output keeps names exactly (it is data); :func:`json_text` only writes the
characters a terminal would act on (C1 controls, bidi overrides) as ``\\uXXXX``.

Every helper is linear in the length of its input (rich's markup and highlighter
regexes were quadratic in a long unbroken name: a 20 KB kernel name took 3.6 s).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported by the two helpers that make its Text: JSON, markdown and HTML need none
    from rich.text import Text

__all__ = ["html_text", "json_text", "md_code", "md_text", "plain", "term", "term_line"]

# ANSI/VT escape sequences: CSI (ESC [ or the 8-bit 0x9b), OSC (ESC ] .. BEL or ST,
# used for terminal titles and hyperlinks), DCS/SOS/PM/APC strings, and two-byte
# escapes. Removed whole so that no parameter bytes are left behind as text.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
# What is left to clean after the escape sequences: whitespace controls become a
# space (a name stays on one line, a table row stays one row), every other C0/C1
# control, DEL and the bidirectional overrides and isolates (which reorder what a
# reader sees) are dropped; lone surrogates (undecodable bytes kept by
# ``surrogateescape``) become U+FFFD so that the text can be written as UTF-8.
_SPACE = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]+")
_DROP = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def plain(value: object, *, max_chars: int | None = None) -> str:
    """``value`` as one line of printable text: escape sequences and control characters removed.

    ``max_chars`` shortens longer text to that many characters, ending in ``…``
    (for terminal tables; files keep the whole name).
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to clean (isprintable is False for every control)
        cleaned = text
    else:
        cleaned = _ANSI.sub("", text)
        cleaned = _SPACE.sub(" ", cleaned)
        cleaned = _DROP.sub("", cleaned)
        cleaned = _SURROGATE.sub("\ufffd", cleaned)
    if max_chars is not None and len(cleaned) > max_chars:
        cleaned = cleaned[: max(max_chars - 1, 0)] + "…"
    return cleaned


def term(value: object, style: str = "", *, max_chars: int | None = None) -> Text:
    """Untrusted text for rich: a ``Text`` is never parsed for markup, emoji codes or highlights."""
    from rich.text import Text

    return Text(plain(value, max_chars=max_chars), style=style)


def term_line(*parts: str | tuple[str, str] | Text) -> Text:
    """One terminal line from parts: a ``str`` is untrusted text, a ``(text, style)`` pair is mlprof's own
    styled words, a ``Text`` is taken as it is.

    ``term_line(("mlprof analyze", "bold"), " ", path)`` prints the path literally.
    """
    from rich.text import Text

    line = Text()
    for part in parts:
        if isinstance(part, Text):
            line.append_text(part)
        elif isinstance(part, tuple):
            line.append(part[0], style=part[1])
        else:
            line.append(plain(part))
    return line


# Markdown: every character that can start markup in CommonMark, GFM (tables,
# strikethrough, autolinks) or Streamlit's dialect (``:emoji:``, ``:red[..]``,
# ``$math$``) is backslash-escaped; CommonMark allows a backslash before any ASCII
# punctuation, so the escaped text renders as the original characters. ``(``, ``)``
# and ``=`` need none once ``[``/``]`` are escaped (no link can form) and the text is
# one line; a list marker at the very start is escaped.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#!|~:$&@])")
_MD_WWW = re.compile(r"(?i)(www)\.")  # GFM autolinks a bare www.example.com
_MD_LEADING = re.compile(r"^(\d+)([.)])|^([-+=])")  # "1. ", "- ", "+ " at the start would begin a list


def md_text(value: object) -> str:
    """Untrusted text inside markdown prose or a table cell: rendered literally, on one line."""
    text = _MD_SPECIAL.sub(r"\\\1", plain(value).lstrip())  # 4 leading spaces would make a code block
    text = _MD_WWW.sub(r"\1\\.", text)
    return _MD_LEADING.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text, count=1)


def md_code(value: object, *, table: bool = True) -> str:
    """Untrusted text as a markdown code span: shown literally in monospace, on one line.

    The fence is one backtick longer than the longest run of backticks inside. In a
    GFM table (``table=True``, the default) a ``|`` would end the cell even in a code
    span, so it is escaped (GFM renders ``\\|`` in a code span as ``|``).
    """
    text = plain(value)
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    if not text:
        return "` `"
    return f"{fence}{pad}{text}{pad}{fence}"


def html_text(value: object, *, max_chars: int | None = None) -> str:
    """Untrusted text inside HTML (element text or a quoted attribute value)."""
    import html  # here: its entity table is ~2 ms of every command's start-up, and only HTML output escapes

    return html.escape(plain(value, max_chars=max_chars), quote=True)


_JSON_RAW = re.compile(r"[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def json_text(encoded: str) -> str:
    """JSON text with DEL, C1 controls, line separators and bidi controls written as ``\\uXXXX`` escapes.

    The JSON encoder already escapes C0 controls; these others it writes raw, and a
    ``cat report.json`` would hand them to the terminal. Outside strings JSON has none
    of them, so the result decodes to exactly the same values.
    """
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
