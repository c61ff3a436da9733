"""Random but valid formulas: fractions, sums, integrals, aligned systems, cases, matrices."""

from __future__ import annotations

import random


def split_words(text: str) -> list[str]:
    return text.split()


_LATIN = list("abcdefghkmnpqrstuvwxyz") + list("ABCDEFGHKLMNPQRSTUVWXYZ")
_GREEK = split_words(
    r"\alpha \beta \gamma \delta \epsilon \varepsilon \zeta \eta \theta \vartheta \kappa \lambda \mu \nu \xi "
    r"\pi \rho \sigma \tau \phi \varphi \chi \psi \omega"
)
_GREEK_UPPER = split_words(r"\Gamma \Delta \Theta \Lambda \Xi \Pi \Sigma \Phi \Psi \Omega")
_ACCENTS = split_words(r"\hat \bar \tilde \vec \dot")
_ALPHABETS = split_words(r"\mathbf \mathcal \mathbb \mathrm")
_FUNCS = split_words(r"\sin \cos \tan \log \ln \exp")
_RELATIONS = split_words(r"= = = = \leq \geq < > \approx \neq \equiv \sim \propto")
_OPS = split_words(r"+ + + - - \cdot \times \pm")
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
