"""Blocks cut out of .tex sources with regular expressions, as the paper did; unusable blocks are dropped."""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

from vary.data.generators.latex.blocks import (
    Block,
    Piece,
    display_block,
    heading_block,
    list_block,
    paragraph_block,
    table_block,
)
from vary.data.generators.latex.formulas import split_words

MATH_COMMANDS = frozenset(
    split_words(
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
    split_words("matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix cases aligned gathered split array")
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
def extract_file(path: Path, mtime_ns: int) -> tuple[Block, ...] | str:
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
