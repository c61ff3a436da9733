"""Install NLTK's WordNet offline from Debian's `wordnet-base` + `wordnet-sense-index` files.

METEOR matches synonyms through WordNet. `nltk.download` needs the internet, but Debian ships the same
WordNet 3.0 database under /usr/share/wordnet. Two catches, both handled here:
  * nltk refuses to follow a symlink that leaves its data directory, so the files are *copied*;
  * Debian omits `lexnames` (the lexicographer-file table, 45 fixed lines), which nltk's reader opens first.

    python -m vary.eval.nltk_data              # into $NLTK_DATA (first entry) or ~/nltk_data
    python -m vary.eval.nltk_data --target DIR

Idempotent: files already in place with the same size are left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import warnings
from pathlib import Path

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

# The files nltk's WordNetCorpusReader reads (lexnames is written below, not copied).
WORDNET_FILES = (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "index.sense", "cntlist.rev",
)  # fmt: skip

# WordNet 3.0 lexnames(5WN): file number, lexicographer file name, syntactic category (1 n, 2 v, 3 a, 4 r).
LEXNAMES = """\
00	adj.all	3
01	adj.pert	3
02	adv.all	4
03	noun.Tops	1
04	noun.act	1
05	noun.animal	1
06	noun.artifact	1
07	noun.attribute	1
08	noun.body	1
09	noun.cognition	1
10	noun.communication	1
11	noun.event	1
12	noun.feeling	1
13	noun.food	1
14	noun.group	1
15	noun.location	1
16	noun.motive	1
17	noun.object	1
18	noun.person	1
19	noun.phenomenon	1
20	noun.plant	1
21	noun.possession	1
22	noun.process	1
23	noun.quantity	1
24	noun.relation	1
25	noun.shape	1
26	noun.state	1
27	noun.substance	1
28	noun.time	1
29	verb.body	2
30	verb.change	2
31	verb.cognition	2
32	verb.communication	2
33	verb.competition	2
34	verb.consumption	2
35	verb.contact	2
36	verb.creation	2
37	verb.emotion	2
38	verb.motion	2
39	verb.perception	2
40	verb.possession	2
41	verb.social	2
42	verb.stative	2
43	verb.weather	2
44	adj.ppl	3
"""


def default_nltk_dir() -> Path:
    """First entry of $NLTK_DATA if set, else ~/nltk_data (both are on nltk's default search path)."""
    env = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    return Path(env).expanduser() if env else Path.home() / "nltk_data"


def install_wordnet(target: Path | None = None, source: Path = DEBIAN_WORDNET_DIR) -> Path:
    """Copy Debian's WordNet into `target/corpora/wordnet` and write `lexnames`; return that folder."""
    missing = [name for name in WORDNET_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"WordNet files missing from {source}: {', '.join(missing)} "
            "(install the Debian packages wordnet-base and wordnet-sense-index)"
        )
    dest = (target or default_nltk_dir()) / "corpora" / "wordnet"
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        src, dst = source / name, dest / name
        if dst.is_symlink() or not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            dst.unlink(missing_ok=True)
            shutil.copyfile(src, dst)  # a real copy: nltk rejects links that point outside its data dir
    lexnames = dest / "lexnames"
    if not lexnames.is_file() or lexnames.read_text() != LEXNAMES:
        lexnames.write_text(LEXNAMES)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=None, help="NLTK data dir (default: $NLTK_DATA or ~/nltk_data)")
    args = parser.parse_args()
    dest = install_wordnet(args.target)
    # Load it through nltk so a broken install fails here, not in the middle of an evaluation.
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if str(dest.parents[1]) not in nltk.data.path:
        nltk.data.path.insert(0, str(dest.parents[1]))
    with warnings.catch_warnings():  # "multilingual functions are not available": no OMW, not needed
        warnings.simplefilter("ignore")
        reader = WordNetCorpusReader(str(dest), None)
    print(f"WordNet {reader.get_version()} installed in {dest} ({len(reader.synsets('dog'))} synsets for 'dog')")


if __name__ == "__main__":
    main()
