r"""LaTeX pages rendered by xelatex; the target is Mathpix-style markdown of exactly what the page shows.

Vary-base's pretraining added LaTeX-rendered pages: arXiv text, formulas and tables re-rendered through
10+ templates, ground truth in Mathpix markdown. This source does the same from either
- generated content (default): TextCorpus paragraphs with inline formulas, random but valid display
  formulas (fractions, sums, integrals, aligned systems, cases, matrices), tabular tables and lists; or
- a folder of .tex files (`input_dir`): headings, paragraphs, display equations, tables and lists are cut
  out with regular expressions, as the paper did. A block that uses a macro we cannot render is dropped;
  a file that yields nothing (binary, not UTF-8, unbalanced braces, only unknown macros) is skipped with
  the reason.

Target format (Mathpix markdown), blocks separated by one blank line:
- paragraphs as plain text with `**bold**` / `*italic*`; a literal dollar sign is written `\$`;
- inline math `\( ... \)`; display math `\[`, the formula, `\]` on three lines (multi-line displays as
  `aligned`/`gathered`/`cases`/matrix environments inside `\[ \]`); displays are never numbered;
- headings `#` (document title) to `####`; lists as `- item` or `1. item`;
- tables as LaTeX `tabular` source, as Mathpix's own .mmd output does: it keeps alignment, rules and
  merged cells that a markdown pipe table would lose.

One page, exactly: every block ends with a marker that records, at shipout, the page where the block
ended. If the document spills onto a second page it is cut after the last block that ended on page 1
and compiled again, then checked to be one page. The image is that page rendered with PyMuPDF,
its longest side `size` pixels (the source protocol's convention, as for the pdf and pages sources; the
model's processor resizes to its input).

Speed (~0.3-0.6 s per compile): the preamble loads only what the template needs, and the amount of
content is estimated from the template's geometry so that most pages need a single compile.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pymupdf
from fontTools.ttLib import TTFont
from PIL import Image

from vary.data.sample import Sample, SkipSample
from vary.data.sources.latex_templates import (
    CJK_FONTS,
    Template,
    available_templates,
    preamble,
)
from vary.data.text import TextCorpus

MARK = "\x00"  # stands in a block's tex where its page marker goes (NUL never occurs in real text)


class XelatexNotFoundError(RuntimeError):
    pass


@dataclass
class Block:
    """One piece of a page: its LaTeX (with MARK), its markdown target, and its size for page filling."""

    kind: str  # heading | paragraph | display | table | list
    tex: str
    md: str
    width_em: float = 0.0  # running text width in em (paragraphs, headings, lists)
    rows: int = 1  # lines of a display, rows of a table, items of a list


# --- text pieces ----------------------------------------------------------------------------------------

_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_SPECIAL = re.compile(r"[\\&%$#_{}~^]")


def tex_escape(text: str) -> str:
    # TeX ligatures would turn `` '' -- into other glyphs than the target's characters: break them up
    text = _TEX_SPECIAL.sub(lambda m: _TEX_ESCAPES[m.group()], text)
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


# --- formulas ---------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


_LATIN = list("abcdefghkmnpqrstuvwxyz") + list("ABCDEFGHKLMNPQRSTUVWXYZ")
_GREEK = _words(
    r"\alpha \beta \gamma \delta \epsilon \varepsilon \zeta \eta \theta \vartheta \kappa \lambda \mu \nu \xi "
    r"\pi \rho \sigma \tau \phi \varphi \chi \psi \omega"
)
_GREEK_UPPER = _words(r"\Gamma \Delta \Theta \Lambda \Xi \Pi \Sigma \Phi \Psi \Omega")
_ACCENTS = _words(r"\hat \bar \tilde \vec \dot")
_ALPHABETS = _words(r"\mathbf \mathcal \mathbb \mathrm")
_FUNCS = _words(r"\sin \cos \tan \log \ln \exp")
_RELATIONS = _words(r"= = = = \leq \geq < > \approx \neq \equiv \sim \propto")
_OPS = _words(r"+ + + - - \cdot \times \pm")
_INDICES = ["i", "j", "k", "n", "t", "0", "1", "2", "i+1", "n-1", "ij", r"\mu", r"\nu", "i,j", "k-1"]
_EXPONENTS = ["2", "2", "3", "n", "-1", "k+1", r"\alpha", "2n", "T", r"\prime", "m"]


class Formulas:
    """Random but valid LaTeX formulas (amsmath only), deterministic from the rng they are given."""

    def __init__(self, rng: random.Random, lang: str):
        self.rng, self.lang = rng, lang

    def symbol(self) -> str:
        r = self.rng
        x = r.random()
        if x < 0.5:
            s = r.choice(_LATIN)
        elif x < 0.8:
            s = r.choice(_GREEK)
        elif x < 0.9:
            s = r.choice(_GREEK_UPPER)
        else:
            s = f"{r.choice(_ALPHABETS)}{{{r.choice(_LATIN[22:])}}}"
        if x < 0.8 and r.random() < 0.12:
            s = f"{r.choice(_ACCENTS)}{{{s}}}"
        if r.random() < 0.3:
            s += f"_{{{r.choice(_INDICES)}}}"
        return s

    def number(self) -> str:
        r = self.rng
        x = r.random()
        if x < 0.5:
            return str(r.randint(2, 9))
        if x < 0.7:
            return str(r.randint(10, 100))
        if x < 0.9:
            return f"{r.uniform(0, 10):.{r.randint(1, 2)}f}"
        return r"\pi"

    def atom(self) -> str:
        r = self.rng
        s = self.symbol() if r.random() < 0.75 else f"{self.number()} {self.symbol()}"
        if r.random() < 0.25 and "_" not in s.split(" ")[-1][-4:]:
            s = f"{s}^{{{r.choice(_EXPONENTS)}}}"
        return s

    def factor(self, depth: int) -> str:
        r = self.rng
        x = r.random()
        if depth <= 0 or x < 0.4:
            return self.atom()
        if x < 0.55:
            return rf"\frac{{{self.expr(depth - 1)}}}{{{self.expr(depth - 1)}}}"
        if x < 0.65:
            return rf"\sqrt{{{self.expr(depth - 1)}}}"
        if x < 0.78:
            fn = r.choice(_FUNCS)
            return f"{fn} {self.symbol()}" if r.random() < 0.5 else rf"{fn}\left( {self.expr(depth - 1)} \right)"
        if x < 0.9:
            power = f"^{{{r.choice(_EXPONENTS)}}}" if r.random() < 0.4 else ""
            return rf"\left( {self.expr(depth - 1)} \right){power}"
        return self.big(depth - 1)

    def expr(self, depth: int) -> str:
        r = self.rng
        terms = [self.factor(depth) for _ in range(r.choice((1, 1, 2, 2, 3)))]
        out = terms[0]
        for t in terms[1:]:
            out += f" {r.choice(_OPS)} {t}"
        return out

    def big(self, depth: int) -> str:
        r = self.rng
        i, n = r.choice(("i", "j", "k", "n")), r.choice(("n", "N", "m", r"\infty", "K"))
        body = self.expr(max(depth, 0))
        x = r.random()
        if x < 0.35:
            return rf"\sum_{{{i}=1}}^{{{n}}} {body}"
        if x < 0.45:
            return rf"\prod_{{{i}=1}}^{{{n}}} {body}"
        if x < 0.75:
            var = r.choice(("x", "t", "s", "u"))
            lo, hi = r.choice((("0", "1"), ("a", "b"), ("0", r"\infty"), (r"-\infty", r"\infty"), ("0", "T")))
            return rf"\int_{{{lo}}}^{{{hi}}} {body} \, d {var}"
        if x < 0.9:
            return rf"\lim_{{{r.choice('nkN')} \to \infty}} {body}"
        operator = r.choice((r"\max", r"\min", r"\sup", r"\inf"))
        return f"{operator}_{{{self.symbol()}}} {body}"

    def lhs(self) -> str:
        r = self.rng
        if r.random() < 0.3:
            return f"{r.choice('fghFGLEP')}({r.choice(('x', 't', 'x, y', 'n', 's'))})"
        return self.symbol()

    def equation(self, depth: int) -> str:
        out = f"{self.lhs()} {self.rng.choice(_RELATIONS)} {self.expr(depth)}"
        if self.rng.random() < 0.15:
            out += f" {self.rng.choice(_RELATIONS)} {self.expr(max(depth - 1, 0))}"
        return out

    def inline(self) -> str:
        """A short formula for running text."""
        for _ in range(10):
            s = self.equation(1) if self.rng.random() < 0.6 else self.expr(1)
            if len(s) <= 48:
                return s
        return self.symbol()

    def display(self) -> tuple[str, int]:
        """(latex, rows) of a display formula."""
        r = self.rng
        x = r.random()
        if x < 0.55:
            return self.equation(r.choice((1, 2, 2, 3))), 1
        if x < 0.75:
            rows = [f"{self.lhs()} &{r.choice(_RELATIONS)} {self.expr(2)}" for _ in range(r.randint(2, 4))]
            return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}", len(rows)
        if x < 0.88:
            other = r"\text{其他}" if self.lang == "zh" else r"\text{otherwise}"
            relation = r.choice((">", "<", r"\geq", r"\leq"))
            cond = f"{self.symbol()} {relation} {self.number()}"
            cases = f"{self.expr(1)} & {cond} \\\\\n{self.expr(1)} & {other}"
            return f"{self.lhs()} = \\begin{{cases}}\n{cases}\n\\end{{cases}}", 2
        env = r.choice(("pmatrix", "bmatrix", "vmatrix"))
        n, m = r.randint(2, 4), r.randint(2, 4)
        rows = [" & ".join(self.symbol() if r.random() < 0.5 else self.number() for _ in range(m)) for _ in range(n)]
        body = " \\\\\n".join(rows)
        return f"{r.choice(_LATIN[22:])} = \\begin{{{env}}}\n{body}\n\\end{{{env}}}", n


# --- generated content ------------------------------------------------------------------------------------


class ContentMaker:
    """Headings, paragraphs, formulas, tables and lists from the corpus, fitted to a page by estimate."""

    def __init__(self, corpus: TextCorpus, lang: str, rng: random.Random, template: Template, glyph_ok):
        self.corpus, self.lang, self.rng, self.template = corpus, lang, rng, template
        self.sep = "" if lang == "zh" else " "
        self.glyph_ok = glyph_ok  # drops characters the page's CJK font cannot draw
        self.formulas = Formulas(rng, lang)

    def _clean(self, text: str) -> str:
        return "".join(c for c in text if self.glyph_ok(c)) if self.lang == "zh" else text

    def heading(self, level: int, number: str = "") -> Block:
        title = self._clean(self.corpus.title(self.rng))
        return heading_block([("text", f"{number} {title}" if number else title)], level)

    def paragraph(self) -> Block:
        r = self.rng
        text = self._clean(self.corpus.paragraph(r, r.randint(2, 5)))
        tokens = text.split(" ") if self.lang == "en" else re.findall(r".{1,6}", text)
        pieces: list[Piece] = [("text", t) for t in tokens if t]
        for _ in range(r.choice((0, 1, 1, 2, 3)) if len(pieces) > 3 else 0):  # inline formulas
            pieces.insert(r.randint(1, len(pieces) - 1), ("math", self.formulas.inline()))
        if len(pieces) > 6 and r.random() < 0.3:  # a bold or italic phrase
            i = r.randrange(1, len(pieces) - 3)
            span = pieces[i : i + r.randint(1, 3)]
            if all(k == "text" for k, _ in span):
                style = "bold" if self.lang == "zh" or r.random() < 0.5 else "italic"
                pieces[i : i + len(span)] = [(style, self.sep.join(t for _, t in span))]
        return paragraph_block(pieces, self.sep)

    def display(self) -> Block:
        latex, rows = self.formulas.display()
        if self.lang == "zh":
            latex = self._clean(latex)
        return display_block(latex, rows)

    def table(self) -> Block:
        r = self.rng
        n_cols = r.randint(2, 4 if self.template.columns > 1 else 6)
        n_rows = r.randint(2, 8)
        short = 4 if self.lang == "zh" else 12

        def word() -> str:
            words = [self._clean(w) for w in self.corpus.words(r, r.choice((1, 1, 2)))]
            text = words[0][:short]
            if len(words) > 1 and len(text) + len(words[1]) < short:
                text += self.sep + words[1]
            return tex_escape(text.strip()) or "-"

        kinds = ["text"] + [r.choice(("int", "float", "float", "percent", "text", "math")) for _ in range(n_cols - 1)]

        def cell(kind: str) -> str:
            if kind == "int":
                return str(r.randint(0, 10 ** r.randint(1, 4)))
            if kind == "float":
                return f"{r.uniform(0, 100):.{r.randint(1, 3)}f}"
            if kind == "percent":
                return f"{r.uniform(0, 100):.1f}\\%"
            if kind == "math" and r.random() < 0.5:
                return rf"\( {self.formulas.atom()} \)"
            return word()

        style = r.choice(("grid", "rules", "open"))
        aligns = ["l"] + [r.choice("lcr") if k in ("text", "math") else r.choice("cr") for k in kinds[1:]]
        spec = "|" + "|".join(aligns) + "|" if style == "grid" else "".join(aligns)
        header = " & ".join((rf"\textbf{{{w}}}" if r.random() < 0.3 else w) for w in (word() for _ in kinds)) + r" \\"
        rows = [" & ".join(cell(k) for k in kinds) + r" \\" for _ in range(n_rows)]
        if style == "grid":
            lines = [r"\hline"] + [x for row in [header, *rows] for x in (row, r"\hline")]
        elif style == "rules":
            lines = [r"\hline", header, r"\hline", *rows, r"\hline"]
        else:
            lines = [header, r"\hline", *rows]
        tabular = f"\\begin{{tabular}}{{{spec}}}\n" + "\n".join(lines) + "\n\\end{tabular}"
        return table_block(tabular, n_rows + 1)

    def items(self) -> Block:
        r = self.rng
        items = []
        for _ in range(r.randint(2, 5)):
            text = self._clean(self.corpus.sentence(r))
            pieces: list[Piece] = [("text", text)]
            if r.random() < 0.3:
                pieces.append(("math", self.formulas.inline()))
            items.append(pieces)
        return list_block(items, numbered=r.random() < 0.4, sep=self.sep)

    def page(self, budget_lines: float) -> list[Block]:
        """Blocks until the estimated height reaches budget_lines."""
        r, blocks, used = self.rng, [], 0.0
        makers = {"paragraph": self.paragraph, "display": self.display, "table": self.table, "list": self.items}
        section = [0, 0]
        numbered = r.random() < 0.6
        if r.random() < 0.3:
            blocks.append(self.heading(1))
        while used < budget_lines:
            last = blocks[-1].kind if blocks else None
            weights = {
                "paragraph": 0.5,
                "display": 0.3 if last == "paragraph" else 0.0,  # formulas follow the text that leads to them
                "table": 0.1 if last != "table" else 0.02,
                "list": 0.05,
                "heading": 0.1 if last not in (None, "heading") else 0.0,
            }
            kind = r.choices(list(weights), list(weights.values()))[0]
            if kind == "heading":
                sub = section[0] > 0 and r.random() < 0.4
                section = [section[0], section[1] + 1] if sub else [section[0] + 1, 0]
                number = ".".join(str(s) for s in section if s) if numbered else ""
                block = self.heading(3 if sub else 2, number)
            else:
                block = makers[kind]()
            blocks.append(block)
            used += estimate_lines(block, self.template, self.lang)
        if blocks[-1].kind == "heading":  # never end a page on a heading
            blocks.pop()
        return blocks


def estimate_lines(block: Block, template: Template, lang: str) -> float:
    """Height of a block in text lines of the template (a deliberately simple model)."""
    line_width_em = template.column_width_pt() / template.font_size
    if block.kind == "heading":
        return 2.5
    if block.kind == "display":
        return 1.6 + 1.3 * block.rows
    if block.kind == "table":
        return 1.8 + 1.15 * block.rows
    gap = 0.6 if template.parskip else 0.1
    if block.kind == "list":
        return math.ceil(block.width_em / (0.9 * line_width_em)) + 0.4 * block.rows + 0.8
    return math.ceil(block.width_em / line_width_em) + gap


def page_lines(template: Template, lang: str) -> float:
    return template.columns * template.text_height_pt() / (1.2 * template.font_size * template.line_spread(lang))


# --- extraction from .tex sources ------------------------------------------------------------------------

MATH_COMMANDS = frozenset(
    _words(
        "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi "
        "rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma "
        "Upsilon Phi Psi Omega frac dfrac tfrac sqrt binom dbinom tbinom sum prod coprod int iint iiint oint "
        "bigcup bigcap bigoplus bigotimes lim limsup liminf sup inf max min arg det exp log ln lg sin cos tan "
        "cot sec csc arcsin arccos arctan sinh cosh tanh coth deg dim ker hom gcd Pr mod bmod pmod left right "
        "big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr middle langle rangle lfloor rfloor lceil rceil "
        "lvert rvert lVert rVert vert Vert mathbf mathrm mathcal mathbb mathit mathsf mathtt mathfrak "
        "boldsymbol bm operatorname text textrm textit textbf mbox hat bar tilde vec dot ddot breve check "
        "acute grave widehat widetilde overline underline overbrace underbrace overrightarrow overleftarrow "
        "overset underset stackrel limits nolimits displaystyle textstyle scriptstyle cdot cdots ldots dots "
        "vdots ddots times div pm mp ast star circ bullet oplus ominus otimes odot wedge vee cap cup setminus "
        "leq le geq ge neq ne approx equiv sim simeq cong propto ll gg prec succ preceq succeq subset supset "
        "subseteq supseteq in notin ni mid parallel perp models vdash to gets mapsto rightarrow leftarrow "
        "Rightarrow Leftarrow leftrightarrow Leftrightarrow longrightarrow longleftarrow Longrightarrow "
        "implies iff uparrow downarrow infty partial nabla forall exists nexists emptyset varnothing neg "
        "lnot prime ell hbar Re Im wp aleph angle triangle square quad qquad not leqslant geqslant lesssim "
        "gtrsim therefore because top bot land lor begin end"
    )
)
MATH_ENVS = frozenset(
    _words("matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix cases aligned gathered split array")
)
_MATH_SYMBOLS = frozenset(",;:! {}|\\#%_&$")  # \, \; \: \! \  \{ \} \| \\ \# \% \_ \& \$

_COMMENT = re.compile(r"(?<!\\)%.*")
_DOCUMENT = re.compile(r"\\begin\{document\}(.*?)(?:\\end\{document\}|\Z)", re.S)
_SKIPPED_ENVS = (
    r"figure\*?|thebibliography|verbatim\*?|lstlisting|minted|tikzpicture|algorithm\*?|algorithmic|comment|"
    r"wrapfigure|picture|filecontents\*?|bibliography"
)
_BALANCED = r"(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*"  # up to two levels of nested braces
_BLOCKS = re.compile(
    rf"(?P<heading>\\(?P<sub>(?:sub){{0,2}})section\*?\s*(?:\[[^\]]*\])?\s*\{{(?P<htext>{_BALANCED})\}})"
    r"|(?P<env>\\begin\{(?P<ename>equation|align|gather|multline|displaymath|eqnarray)(?P<star>\*?)\}"
    r"(?P<ebody>.*?)\\end\{(?P=ename)(?P=star)\})"
    r"|\\\[(?P<bbody>.*?)\\\]"
    r"|\$\$(?P<dbody>.*?)\$\$"
    rf"|\\begin\{{tabular\}}\s*(?P<spec>\{{{_BALANCED}\}})(?P<tbody>.*?)\\end\{{tabular\}}"
    r"|\\begin\{(?P<lname>itemize|enumerate)\}(?P<lbody>.*?)\\end\{(?P=lname)\}"
    rf"|\\begin\{{(?P<sname>{_SKIPPED_ENVS})\}}.*?\\end\{{(?P=sname)\}}",
    re.S,
)
# Layout commands around the content: removed before paragraphs are split.
_IGNORABLE = re.compile(
    r"\\(?:begin|end)\{(?:table\*?|center|abstract|flushleft|flushright|small|footnotesize|quote)\}(?:\[[^\]]*\])?"
    r"|\\(?:caption|label|vspace\*?|hspace\*?|footnote|thanks|index|bibliographystyle|bibliography|input|include)"
    rf"\s*(?:\[[^\]]*\])?\{{{_BALANCED}\}}"
    r"|\\(?:centering|maketitle|noindent|newpage|clearpage|medskip|bigskip|smallskip|par|hline|toprule|midrule|"
    r"bottomrule|tableofcontents|appendix|indent)\b"
)
_INLINE_MATH = re.compile(r"(?<!\\)\$(?P<a>[^$]+?)(?<!\\)\$|\\\((?P<b>.+?)\\\)", re.S)
_FORMAT = re.compile(r"\\(?P<cmd>textbf|textit|emph)\{(?P<arg>[^{}\\$]*)\}")
_REFERENCE = re.compile(
    r"\\(?P<cmd>cite[pt]?|citep|citet|ref|eqref|autoref|cref|Cref)\s*(?:\[[^\]]*\])?\{(?P<arg>[^{}]*)\}"
)
# Argument-free user macros (\newcommand{\R}{\mathbb{R}}, \def\eps{\epsilon}) are expanded in place.
_MACRO = re.compile(
    rf"\\(?:re)?newcommand\*?\s*\{{?\\(?P<a>[A-Za-z]+)\}}?\s*\{{(?P<abody>{_BALANCED})\}}"
    rf"|\\def\s*\\(?P<d>[A-Za-z]+)\s*\{{(?P<dbody>{_BALANCED})\}}"
)
_TEXT_ESCAPED = {r"\%": "%", r"\&": "&", r"\_": "_", r"\#": "#", r"\$": "$", r"\{": "{", r"\}": "}"}


def balanced(text: str) -> bool:
    depth = 0
    for m in re.finditer(r"(?<!\\)[{}]", text):
        depth += 1 if m.group() == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def math_ok(latex: str, display: bool) -> bool:
    """True when every command in the formula is one we know xelatex+amsmath renders."""
    if not latex.strip() or len(latex) > (1500 if display else 200) or "$" in latex.replace(r"\$", ""):
        return False
    if not balanced(latex) or (not display and "\\\\" in latex):
        return False
    for m in re.finditer(r"\\([A-Za-z]+|.)", latex):
        name = m.group(1)
        if name.isalpha() and name not in MATH_COMMANDS or not name.isalpha() and name not in _MATH_SYMBOLS:
            return False
    envs = re.findall(r"\\(?:begin|end)\{([^}]*)\}", latex)
    return all(e in MATH_ENVS for e in envs)


def text_pieces(raw: str, seed: str) -> list[Piece] | None:
    """Running LaTeX text -> pieces, or None when it holds anything we cannot reproduce exactly."""
    number = zlib.crc32(seed.encode()) % 40 + 1  # stable stand-in for \cite and \ref targets
    text = " ".join(raw.split())
    text = _REFERENCE.sub(
        lambda m: (
            f"[{number}]" if m["cmd"].startswith("cite") else (f"({number})" if m["cmd"] == "eqref" else str(number))
        ),
        text,
    )
    pieces: list[Piece] = []
    pos = 0
    for m in _INLINE_MATH.finditer(text):
        if not _plain_pieces(text[pos : m.start()], pieces):
            return None
        latex = " ".join((m["a"] or m["b"]).split())
        if not math_ok(latex, display=False):
            return None
        pieces.append(("math", latex))
        pos = m.end()
    if not _plain_pieces(text[pos:], pieces):
        return None
    return pieces if any(k != "math" for k, _ in pieces) else None


def _plain_pieces(text: str, out: list[Piece]) -> bool:
    """Text between formulas: \\textbf/\\emph become bold/italic pieces; any other macro rejects it."""
    pos = 0
    for m in _FORMAT.finditer(text):
        if not _append_text(text[pos : m.start()], out):
            return False
        out.append(("bold" if m["cmd"] == "textbf" else "italic", _plain(m["arg"])))
        pos = m.end()
    return _append_text(text[pos:], out)


def _plain(text: str) -> str:
    for k, v in _TEXT_ESCAPED.items():
        text = text.replace(k, v)
    text = text.replace("~", " ").replace("---", "\u2014").replace("--", "\u2013")
    return text.replace("``", "\u201c").replace("''", "\u201d").replace("`", "\u2018")


def _append_text(text: str, out: list[Piece]) -> bool:
    text = _plain(text)
    if "\\" in text or "{" in text or "}" in text or "$" in text:
        return False
    if text:
        out.append(("text", text))
    return True


def _display_latex(m: re.Match) -> tuple[str, int] | None:
    """A display-math match -> (latex ready for \\[ \\], rows), or None when unusable."""
    name = m["ename"]
    body = m["ebody"] if name else (m["bbody"] if m["bbody"] is not None else m["dbody"])
    body = re.sub(r"\\(?:label|tag)\*?\{[^{}]*\}|\\(?:nonumber|notag)\b", "", body)
    rows = [row.strip() for row in re.split(r"\\\\(?:\[[^\]]*\])?", body) if row.strip()]
    if not rows:
        return None
    if name == "eqnarray":
        rows = [re.sub(r"&\s*([^&]*?)\s*&", r"&\1 ", row) for row in rows]
    if len(rows) > 1 or "&" in body and name in ("align", "eqnarray"):
        env = "gathered" if name in ("gather", "multline") else "aligned"
        latex = f"\\begin{{{env}}}\n" + " \\\\\n".join(" ".join(row.split()) for row in rows) + f"\n\\end{{{env}}}"
    else:
        latex = " ".join(rows[0].split())
    return (latex, len(rows)) if math_ok(latex, display=True) else None


def _table(spec: str, body: str) -> tuple[str, int] | None:
    body = re.sub(r"\\(?:toprule|midrule|bottomrule)\b", r"\\hline", body)
    body = _INLINE_MATH.sub(lambda m: rf"\( {' '.join((m['a'] or m['b']).split())} \)", body)
    if "tabular" in body or not re.fullmatch(r"\{[lcrp|@{}\d.\s\w\\]*\}", spec):
        return None
    allowed = {"hline", "cline", "multicolumn", "multirow", "textbf", "textit", "emph", "(", ")"}
    for m in re.finditer(r"\\([A-Za-z]+|.)", body):
        name = m.group(1)
        if name in ("\\", "%", "&", "_", "#", "$", "{", "}", " ") or name in allowed:
            continue
        if name.isalpha() and name in MATH_COMMANDS and _inside_math(body, m.start()):
            continue
        return None
    rows = [" ".join(r.split()) for r in re.split(r"(?<=\\\\)|(?=\\hline)|(?<=\\hline)", body) if r.strip()]
    n_rows = sum(1 for r in rows if r.endswith("\\\\"))
    if not balanced(body) or n_rows == 0 or n_rows > 40:
        return None
    return f"\\begin{{tabular}}{spec}\n" + "\n".join(rows) + "\n\\end{tabular}", n_rows


def _inside_math(text: str, pos: int) -> bool:
    return text.rfind(r"\(", 0, pos) > text.rfind(r"\)", 0, pos)


def expand_macros(body: str, preamble: str) -> str:
    """Substitute the argument-free macros the preamble (or the body) defines; others stay unknown."""
    macros = {}
    for m in _MACRO.finditer(preamble + "\n" + body):
        name, definition = (m["a"], m["abody"]) if m["a"] else (m["d"], m["dbody"])
        if "#" not in definition:
            macros[name] = definition
    if not macros:
        return body
    body = _MACRO.sub(" ", body)
    pattern = re.compile(r"\\(" + "|".join(sorted(map(re.escape, macros), key=len, reverse=True)) + r")(?![A-Za-z])")
    for _ in range(3):  # a macro may use another one
        body = pattern.sub(lambda m: macros[m.group(1)], body)
    return body


def extract_blocks(source: str, name: str) -> list[Block]:
    """Headings, paragraphs, displays, tables and lists of a .tex source, in order (regex extraction).

    Raises ValueError with the reason when nothing usable is found.
    """
    text = "\n".join(_COMMENT.sub("", line) for line in source.splitlines())
    m = _DOCUMENT.search(text)
    body = m.group(1) if m else text
    body = expand_macros(body, text[: m.start()] if m else "")
    if not balanced(body):
        raise ValueError(f"{name}: unbalanced braces")
    blocks: list[Block] = []

    def paragraphs(chunk: str) -> None:
        chunk = _IGNORABLE.sub(" ", chunk)
        for k, raw in enumerate(re.split(r"\n\s*\n", chunk)):
            if len(raw.strip()) < 20:
                continue
            pieces = text_pieces(raw, f"{name}:{len(blocks)}:{k}")
            if pieces:
                blocks.append(paragraph_block(pieces))

    pos = 0
    for m in _BLOCKS.finditer(body):
        paragraphs(body[pos : m.start()])
        pos = m.end()
        if m["heading"]:
            pieces = text_pieces(m["htext"], name)
            if pieces:
                blocks.append(heading_block(pieces, 2 + len(m["sub"]) // 3))
        elif m["ename"] or m["bbody"] is not None or m["dbody"] is not None:
            found = _display_latex(m)
            if found:
                blocks.append(display_block(*found))
        elif m["spec"]:
            found = _table(m["spec"], m["tbody"])
            if found:
                blocks.append(table_block(*found))
        elif m["lname"]:
            items = [text_pieces(item, name) for item in re.split(r"\\item\b", m["lbody"])[1:]]
            if items and all(items):
                blocks.append(list_block(items, numbered=m["lname"] == "enumerate"))
    paragraphs(body[pos:])
    if not blocks:
        raise ValueError(f"{name}: no usable paragraphs, equations or tables")
    return blocks


@functools.lru_cache(maxsize=256)
def _extract_file(path: Path, mtime_ns: int) -> tuple[Block, ...] | str:
    """Blocks of one .tex file, or the reason it is unusable (cached per file version)."""
    data = path.read_bytes()
    if b"\x00" in data:
        return f"{path.name}: binary file, not LaTeX source"
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start})"
    try:
        return tuple(extract_blocks(source, path.name))
    except ValueError as err:
        return str(err)


# --- xelatex ------------------------------------------------------------------------------------------------


def _tex_env() -> dict[str, str]:
    # fixed dates: the PDF (and anything TeX prints from \today) does not depend on the clock
    return {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}


def first_error(log: str) -> str:
    """The first TeX error of a log (with its line), or its last line when there is none."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("!"):
            where = next((x.strip() for x in lines[i + 1 : i + 8] if x.startswith("l.")), "")
            return f"{line[1:].strip()} {where}".strip()
    tail = [x for x in lines if x.strip()]
    return tail[-1].strip() if tail else "no log written"


class Xelatex:
    """Runs xelatex in a scratch folder with a timeout, no shell escape and fixed dates."""

    def __init__(self, executable: str = "xelatex", timeout: float = 60.0):
        found = shutil.which(executable)
        if found is None:
            raise XelatexNotFoundError(
                f"xelatex not found ({executable!r} is not on PATH). The latex generator needs TeX Live: run "
                "`bash scripts/setup.sh` (installs texlive-xetex texlive-latex-recommended texlive-lang-chinese)."
            )
        self.executable, self.timeout = found, float(timeout)

    def compile(self, document: str, workdir: Path) -> Path:
        """Compile `document` to workdir/page.pdf; a failure becomes SkipSample with TeX's first error."""
        (workdir / "page.tex").write_text(document, encoding="utf-8")
        cmd = [self.executable, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "page.tex"]
        try:
            proc = subprocess.run(
                cmd, cwd=workdir, capture_output=True, timeout=self.timeout, env=_tex_env(), stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise SkipSample(f"latex: xelatex timed out after {self.timeout:g} s") from None
        pdf = workdir / "page.pdf"
        if proc.returncode != 0 or not pdf.is_file():
            log = (workdir / "page.log").read_text(errors="replace") if (workdir / "page.log").is_file() else ""
            raise SkipSample(f"latex: xelatex failed: {first_error(log or proc.stdout.decode(errors='replace'))}")
        return pdf


def read_marks(path: Path) -> dict[int, int]:
    """block index -> page where it ended, from the \\varymark file."""
    marks = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                marks.setdefault(int(parts[0]), int(parts[1]))
    return marks


def render_first_page(pdf: Path, size: int) -> tuple[Image.Image, int]:
    """(first page as an RGB image whose longest side is `size`, page count)."""
    with pymupdf.open(pdf) as doc:
        page = doc[0]
        zoom = size / max(page.rect.width, page.rect.height)
        expected = (round(page.rect.width * zoom), round(page.rect.height * zoom))
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        pages = doc.page_count
    if image.size != expected:  # the pixmap rounds its box outward: at most one pixel off
        image = image.resize(expected, Image.Resampling.BICUBIC)
    return image, pages


# --- glyph coverage -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _cjk_cmap(font_key: str) -> frozenset[int] | None:
    """Code points the CJK font draws (None when its file cannot be found or read: then trust it)."""
    font, _ = CJK_FONTS[font_key]
    if font.endswith((".otf", ".ttf")):
        path, index = subprocess.run(["kpsewhich", font], capture_output=True, text=True).stdout.strip(), "0"
    else:
        out = subprocess.run(["fc-match", "-f", "%{file}|%{index}", font], capture_output=True, text=True).stdout
        path, _, index = out.partition("|")
    if not path:
        return None
    try:
        with TTFont(path, fontNumber=int(index or 0), lazy=True) as ttf:
            return frozenset(ttf.getBestCmap())
    except (OSError, ValueError, KeyError):
        return None


@functools.lru_cache(maxsize=16)
def glyph_checker(font_key: str):
    """A cached `char -> bool`: can the template's CJK font draw this character?"""
    cmap = _cjk_cmap(font_key)

    def ok(char: str) -> bool:
        # below U+2E80 (Latin, punctuation) the main font draws; \tracinglostchars=3 catches the rest
        return ord(char) < 0x2E80 or cmap is None or ord(char) in cmap

    return ok


# --- the source -------------------------------------------------------------------------------------------


class LatexSource:
    """LaTeX-rendered pages (generated, or extracted from `input_dir` .tex files); task "markdown"."""

    name = "latex"
    langs = ("en", "zh")

    def __init__(
        self,
        count: int | None,
        lang: str = "en",
        size: int = 1024,
        input_dir: str | Path | None = None,
        templates: str | list[str] | tuple[str, ...] | None = None,
        corpus_dir: str | Path | None = None,
        xelatex: str = "xelatex",
        timeout: float | str = 60.0,
    ):
        if lang not in self.langs:
            raise ValueError(f"latex: lang must be 'en' or 'zh', got {lang!r}")
        if count is None and input_dir is None:
            raise ValueError("latex: --count is required for generated pages (or give an input folder of .tex files)")
        self.lang, self.size = lang, int(size)
        self.tex = Xelatex(xelatex, float(timeout))
        names = [t.strip() for t in templates.split(",")] if isinstance(templates, str) else templates
        self.templates = available_templates(names)
        if not self.templates:
            raise RuntimeError(
                f"latex: none of the templates {names or 'all'} has its fonts installed; run scripts/setup.sh"
            )
        self.corpus = TextCorpus(lang, corpus_dir=corpus_dir)
        self.files: list[Path] = []
        self.input_dir = Path(input_dir) if input_dir is not None else None
        if self.input_dir is not None:
            if not self.input_dir.is_dir():
                raise FileNotFoundError(f"latex: input_dir {self.input_dir} is not a folder")
            self.files = sorted(p for p in self.input_dir.rglob("*.tex") if p.is_file())
            if not self.files:
                raise ValueError(f"latex: no .tex files under {self.input_dir}")
        # from a folder: one sample per file unless a count asks for more (files are revisited) or fewer
        self.count = int(count) if count is not None else len(self.files)

    def describe(self) -> dict:
        return {"templates": [t.name for t in self.templates], "input_files": len(self.files)}

    def __len__(self) -> int:
        return self.count

    def make(self, index: int, rng: random.Random) -> Sample:
        template = rng.choice(self.templates)
        budget = page_lines(template, self.lang) * rng.uniform(0.6, 1.0)
        meta: dict = {"template": template.name}
        if self.input_dir is None:
            maker = ContentMaker(self.corpus, self.lang, rng, template, glyph_checker(template.cjk_font))
            blocks = maker.page(budget)
        else:
            path = self.files[index % len(self.files)]
            meta["source"] = str(path.relative_to(self.input_dir))
            blocks = self._from_file(path, rng, template, budget, first_visit=index < len(self.files))
        with tempfile.TemporaryDirectory(prefix="vary-latex-") as tmp:
            blocks, image, compiles = self._fit(blocks, template, Path(tmp))
        meta.update(blocks=len(blocks), compiles=compiles)
        return Sample(
            key=f"{self.name}-{self.lang}-{index:08d}",
            image=image,
            target="\n\n".join(b.md for b in blocks),
            task="markdown",
            lang=self.lang,
            kind=self.name,
            meta=meta,
        )

    def _from_file(
        self, path: Path, rng: random.Random, template: Template, budget: float, first_visit: bool
    ) -> list[Block]:
        """Consecutive blocks of one file: from its start on the first pass, from a random block after."""
        found = _extract_file(path, path.stat().st_mtime_ns)
        if isinstance(found, str):
            raise SkipSample(f"latex: {found}")
        start = 0 if first_visit else rng.randrange(len(found))
        blocks, used = [], 0.0
        for block in found[start:]:
            if used >= budget:
                break
            blocks.append(block)
            used += estimate_lines(block, template, self.lang)
        return blocks

    def _document(self, blocks: list[Block], template: Template) -> str:
        head, body = [], []
        for i, block in enumerate(blocks):
            tex = block.tex.replace(MARK, rf"\varymark{{{i}}}")
            if i == 0 and block.kind == "heading" and block.md.startswith("# "):
                head.append(tex)  # the document title spans both columns
            else:  # a display continues the paragraph before it, as in real documents
                body.append(("\n" if block.kind == "display" else "\n\n") + tex)
        text = "".join(body)
        if template.columns > 1:
            text = f"\n\\begin{{multicols}}{{{template.columns}}}{text}\n\\end{{multicols}}"
        return f"{preamble(template, self.lang)}\n\\begin{{document}}\n{''.join(head)}{text}\n\\end{{document}}\n"

    def _fit(self, blocks: list[Block], template: Template, workdir: Path) -> tuple[list[Block], Image.Image, int]:
        """Compile; if the content spills over, keep the blocks that ended on page 1 and compile again."""
        pdf = self.tex.compile(self._document(blocks, template), workdir)
        with pymupdf.open(pdf) as doc:
            pages = doc.page_count
        if pages == 1:
            return blocks, render_first_page(pdf, self.size)[0], 1
        marks = read_marks(workdir / "page.marks")
        keep = 0
        while keep < len(blocks) and marks.get(keep) == 1:
            keep += 1
        if keep == 0:
            raise SkipSample(f"latex: the first block does not fit on one page ({template.name})")
        blocks = blocks[:keep]
        pdf = self.tex.compile(self._document(blocks, template), workdir)
        image, pages = render_first_page(pdf, self.size)
        if pages != 1:
            raise SkipSample(f"latex: still {pages} pages after trimming to {keep} blocks ({template.name})")
        return blocks, image, 2
