"""Blocks: the unit a LaTeX page is built from, with its tex and its Mathpix-markdown target."""

from __future__ import annotations

from dataclasses import dataclass

from vary.data.text import latex_escape

MARK = "\x00"  # stands in a block's tex where its page marker goes (NUL never occurs in real text)


@dataclass
class Block:
    """One piece of a page: its LaTeX (with MARK), its markdown target, and its size for page filling."""

    kind: str  # heading | paragraph | display | table | list
    tex: str
    md: str
    width_em: float = 0.0  # running text width in em (paragraphs, headings, lists)
    rows: int = 1  # lines of a display, rows of a table, items of a list


def tex_escape(text: str) -> str:
    # TeX ligatures would turn `` '' -- into other glyphs than the target's characters: break them up
    text = latex_escape(text)
    return text.replace("--", "-{}-").replace("``", "`{}`").replace("''", "'{}'")


def md_escape(text: str) -> str:
    return text.replace("$", r"\$")  # `$` opens math in Mathpix markdown


def _em(text: str) -> float:
    """Approximate printed width in em: CJK characters are square, Latin ones about half an em."""
    return sum(1.0 if "\u2e80" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef" else 0.5 for c in text)


Piece = tuple[str, str]  # (kind, text): kind is text | math | bold | italic


def _render(pieces: list[Piece], sep: str) -> tuple[str, str, float]:
    """(tex, markdown, width_em) of running text made of pieces joined by `sep`."""
    tex, md, width = [], [], 0.0
    for kind, text in pieces:
        if kind == "math":
            tex.append(rf"\( {text} \)")
            md.append(rf"\( {text} \)")
            width += 0.35 * len(text)  # commands print narrower than they are spelled
            continue
        width += _em(text)
        if kind == "bold":
            tex.append(rf"\textbf{{{tex_escape(text)}}}")
            md.append(f"**{md_escape(text)}**")
        elif kind == "italic":
            tex.append(rf"\emph{{{tex_escape(text)}}}")
            md.append(f"*{md_escape(text)}*")
        else:
            tex.append(tex_escape(text))
            md.append(md_escape(text))
    return sep.join(tex), sep.join(md), width + 0.5 * len(sep) * max(len(pieces) - 1, 0)


def heading_block(pieces: list[Piece], level: int, sep: str = "") -> Block:
    tex, md, width = _render(pieces, sep)
    return Block("heading", rf"\varyheading{{{level}}}{{{tex}{MARK}}}", "#" * level + " " + md, width * 1.3)


def paragraph_block(pieces: list[Piece], sep: str = "") -> Block:
    tex, md, width = _render(pieces, sep)
    return Block("paragraph", tex + MARK, md, width)


def display_block(latex: str, rows: int = 1) -> Block:
    return Block("display", rf"\varydisplay{{{latex}}}{{{MARK}}}", f"\\[\n{latex}\n\\]", rows=rows)


def table_block(tabular: str, rows: int) -> Block:
    return Block("table", rf"\varytable{{{tabular}}}{{{MARK}}}", tabular, rows=rows)


def list_block(items: list[list[Piece]], numbered: bool, sep: str = "") -> Block:
    env = "enumerate" if numbered else "itemize"
    rendered = [_render(pieces, sep) for pieces in items]
    tex = "\n".join(rf"\item {t}" for t, _, _ in rendered)
    md = "\n".join(f"{i + 1}. {m}" if numbered else f"- {m}" for i, (_, m, _) in enumerate(rendered))
    width = sum(w for _, _, w in rendered)
    return Block("list", rf"\begin{{{env}}}" + "\n" + tex + MARK + "\n" + rf"\end{{{env}}}", md, width, len(items))
