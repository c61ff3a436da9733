r"""Page templates for the LaTeX generator: layouts, fonts, margins, spacing, and the preamble they make.

The paper re-rendered arXiv content through "10+ pdflatex templates". A template here fixes everything
visual that is not content: paper, margins, one or two columns, font size, line spread, paragraph style,
text/heading/CJK/math fonts. Every font comes from a Debian package the set-up installs (TeX Live's own
Latin Modern and Fandol, fonts-dejavu, fonts-liberation, fonts-noto-cjk, fonts-arphic via
texlive-lang-chinese); a template whose fonts are missing on this machine is left out at run time.

The preamble loads only what a template needs: fontspec only for a non-default text font, unicode-math
only for a math font, xeCJK only for Chinese (each costs ~0.1-0.5 s per compile). Preloading packages in
an xelatex format does not work here: XeTeX cannot dump a format once fontspec (or even \documentclass)
has loaded an OpenType font, and a format built past that error can crash (seen with ctexart).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

# name -> (fontspec font, extra fontspec options). A name ending in .otf/.ttf is a file TeX Live finds.
CJK_FONTS = {
    "FandolSong": ("FandolSong-Regular.otf", "BoldFont=FandolSong-Bold.otf"),
    "FandolHei": ("FandolHei-Regular.otf", "BoldFont=FandolHei-Bold.otf"),
    "FandolKai": ("FandolKai-Regular.otf", "AutoFakeBold=2.5"),
    "FandolFang": ("FandolFang-Regular.otf", "AutoFakeBold=2.5"),
    "NotoSerifSC": ("Noto Serif CJK SC", ""),
    "NotoSansSC": ("Noto Sans CJK SC", ""),
    "ArphicSong": ("AR PL SungtiL GB", "AutoFakeBold=2.5"),
    "ArphicKai": ("AR PL KaitiM GB", "AutoFakeBold=2.5"),
}

PAPERS_PT = {"a4paper": (597.5, 845.0), "letterpaper": (614.0, 795.0), "b5paper": (516.0, 729.0)}
CM = 28.45  # TeX points per centimetre


@dataclass(frozen=True)
class Template:
    name: str
    font_size: int = 11  # class option: 10, 11 or 12 (pt)
    paper: str = "a4paper"
    margins_cm: tuple[float, float, float, float] = (2.5, 2.5, 2.5, 2.5)  # left, right, top, bottom
    columns: int = 1  # 2 uses multicol (balanced columns on a short last page, like real papers)
    linespread: float = 1.0
    parskip: bool = False  # blank line between paragraphs instead of an indent
    main_font: str | None = None  # fontspec main font; None keeps Latin Modern, LaTeX's default
    sans_font: str | None = None  # headings in this sans font (None: headings in the main font)
    math_font: str | None = None  # unicode-math font; None keeps Computer Modern math (amsmath)
    cjk_font: str = "FandolSong"  # key of CJK_FONTS, used by Chinese documents
    raggedright: bool = False

    def fonts(self) -> list[str]:
        """Every font the template needs (for the availability check)."""
        named = [self.main_font, self.sans_font, self.math_font, CJK_FONTS[self.cjk_font][0]]
        return [f for f in named if f]

    # --- geometry, used to estimate how much content fills a page ------------------------------------
    def column_width_pt(self) -> float:
        width = PAPERS_PT[self.paper][0] - (self.margins_cm[0] + self.margins_cm[1]) * CM
        return (width - 18.0 * (self.columns - 1)) / self.columns

    def text_height_pt(self) -> float:
        return PAPERS_PT[self.paper][1] - (self.margins_cm[2] + self.margins_cm[3]) * CM

    def line_spread(self, lang: str) -> float:
        return self.linespread * (1.2 if lang == "zh" else 1.0)  # Chinese text is set looser (ctex: 1.3)


TEMPLATES: tuple[Template, ...] = (
    Template("article-lm"),
    Template("twocol-times", 10, "letterpaper", (1.9, 1.9, 2.2, 2.2), 2, main_font="Liberation Serif"),
    Template(
        "report-sans",
        11,
        margins_cm=(2.0, 2.0, 2.0, 2.0),
        linespread=1.15,
        parskip=True,
        main_font="Liberation Sans",
        sans_font="Liberation Sans",
        cjk_font="FandolHei",
    ),
    Template(
        "dejavu-wide",
        10,
        margins_cm=(3.0, 3.0, 3.0, 3.0),
        linespread=1.1,
        main_font="DejaVu Serif",
        cjk_font="NotoSerifSC",
    ),
    Template("book-b5", 12, "b5paper", (2.0, 2.0, 2.2, 2.2), linespread=1.2),
    Template("twocol-lm", 10, margins_cm=(1.5, 1.5, 1.8, 1.8), columns=2, cjk_font="NotoSerifSC"),
    Template("thesis-double", 12, margins_cm=(3.0, 2.5, 2.5, 2.5), linespread=1.5, main_font="Liberation Serif"),
    Template(
        "notes-sans",
        11,
        margins_cm=(2.5, 2.5, 2.0, 2.0),
        main_font="DejaVu Sans",
        sans_font="DejaVu Sans",
        cjk_font="FandolKai",
        raggedright=True,
    ),
    Template("unicode-math-lm", 11, "letterpaper", math_font="Latin Modern Math", cjk_font="NotoSansSC"),
    Template(
        "narrow-margins", 10, margins_cm=(1.2, 1.2, 1.2, 1.2), main_font="Liberation Serif", cjk_font="FandolFang"
    ),
    Template(
        "twocol-sans",
        11,
        margins_cm=(1.8, 1.8, 2.0, 2.0),
        columns=2,
        parskip=True,
        main_font="Latin Modern Sans",
        sans_font="Latin Modern Sans",
        cjk_font="FandolHei",
    ),
    Template(
        "arphic-serif",
        11,
        margins_cm=(2.5, 2.5, 2.5, 2.5),
        linespread=1.25,
        main_font="DejaVu Serif",
        cjk_font="ArphicSong",
    ),
    Template("kai-letter", 12, "letterpaper", (2.2, 2.2, 2.0, 2.0), main_font="Liberation Serif", cjk_font="ArphicKai"),
    Template(
        "b5-sans",
        10,
        "b5paper",
        (1.8, 1.8, 2.0, 2.0),
        linespread=1.1,
        parskip=True,
        main_font="DejaVu Sans",
        sans_font="DejaVu Sans",
        cjk_font="NotoSansSC",
    ),
)


@functools.lru_cache(maxsize=1)
def _fontconfig_families() -> frozenset[str]:
    if shutil.which("fc-list") is None:
        return frozenset()
    out = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True, check=False).stdout
    return frozenset(name.strip() for line in out.splitlines() for name in line.split(","))


@functools.lru_cache(maxsize=64)
def font_available(font: str) -> bool:
    """True when xelatex can load `font`: a TeX Live file (kpsewhich) or a fontconfig family."""
    if font.endswith((".otf", ".ttf")):
        found = subprocess.run(["kpsewhich", font], capture_output=True, text=True, check=False).stdout
        return bool(found.strip())
    return font in _fontconfig_families() or font in ("Latin Modern Math", "Latin Modern Sans")


def available_templates(names: list[str] | tuple[str, ...] | None = None) -> list[Template]:
    """Templates (all, or those named) whose fonts are installed here."""
    chosen = TEMPLATES if names is None else [t for t in TEMPLATES if t.name in names]
    unknown = sorted(set(names or ()) - {t.name for t in TEMPLATES})
    if unknown:
        raise ValueError(f"latex: unknown template(s) {unknown}; known: {[t.name for t in TEMPLATES]}")
    return [t for t in chosen if all(font_available(f) for f in t.fonts())]


# \varymark{i} records at shipout the page on which block i ended (see generator.py's fitting loop); the
# display and table macros take it as their second argument. \varydisplay/\varytable shrink a formula or table wider than the column instead of letting it overflow
# the margin (overflowing text would be in the target but off the visible page).
_MACROS = r"""
\newwrite\varymarks\immediate\openout\varymarks=\jobname.marks
\newcommand\varymark[1]{\write\varymarks{#1 \thepage}}
\newsavebox\varybox
\newcommand\varyfit{\ifdim\wd\varybox>\linewidth\resizebox{\linewidth}{!}{\usebox\varybox}\else\usebox\varybox\fi}
\newcommand\varydisplay[2]{\[\sbox\varybox{$\displaystyle #1$}\varyfit#2\]}
\newcommand\varytable[2]{\par\smallskip{\centering\sbox\varybox{#1}\varyfit#2\par}\smallskip}
\pagestyle{empty}
\tracinglostchars=3
\emergencystretch=3em
\setlength{\columnsep}{18pt}
"""


def preamble(template: Template, lang: str) -> str:
    """Class, packages, fonts, page geometry, spacing and the helper macros of a document."""
    left, right, top, bottom = template.margins_cm
    lines = [rf"\documentclass[{template.font_size}pt]{{article}}", r"\usepackage{amsmath,amssymb}"]
    if template.math_font:
        lines.append(r"\usepackage{unicode-math}")
    elif template.main_font or template.sans_font or lang == "zh":
        lines.append(r"\usepackage[no-math]{fontspec}")  # keep Computer Modern math
    if lang == "zh":
        lines.append(r"\usepackage{xeCJK}")
    lines += [
        r"\usepackage{graphicx,array,multirow" + (",multicol}" if template.columns > 1 else "}"),
        rf"\usepackage[{template.paper},left={left}cm,right={right}cm,top={top}cm,bottom={bottom}cm]{{geometry}}",
        rf"\linespread{{{template.line_spread(lang):.3f}}}",
    ]
    if template.main_font:
        lines.append(rf"\setmainfont{{{template.main_font}}}")
    if template.sans_font:
        lines.append(rf"\setsansfont{{{template.sans_font}}}")
    if template.math_font:
        lines.append(rf"\setmathfont{{{template.math_font}}}")
    if lang == "zh":
        font, options = CJK_FONTS[template.cjk_font]
        lines.append(rf"\setCJKmainfont[{options}]{{{font}}}" if options else rf"\setCJKmainfont{{{font}}}")
    if template.parskip:
        lines.append(r"\setlength{\parindent}{0pt}\setlength{\parskip}{0.6\baselineskip plus 2pt}")
    elif lang == "zh":
        lines.append(r"\setlength{\parindent}{2em}")
    if template.raggedright:
        lines.append(r"\AtBeginDocument{\raggedright\setlength{\parindent}{0pt}}")
    family = r"\sffamily" if template.sans_font else ""
    lines.append(
        rf"\newcommand\varyheading[2]{{\par\addvspace{{1.2ex}}{{\noindent\raggedright\hyphenpenalty=10000{family}\bfseries"
        r"\ifcase#1\or\LARGE\or\Large\or\large\else\normalsize\fi\relax #2\par}\nobreak\smallskip}"
    )
    return "\n".join(lines) + _MACROS
