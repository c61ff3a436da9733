#!/usr/bin/env bash
# Installs everything vary needs on a fresh Debian machine (run as root, or with sudo available).
#   bash scripts/setup.sh         runtime: system packages + the vary package
#   bash scripts/setup.sh --dev   also the test tools (pytest, ruff, httpx, playwright) and test data
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0; [[ "${1:-}" == "--dev" ]] && DEV=1
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"

# System packages: fonts for the page renderer, Tesseract (baseline OCR), TeX for the LaTeX generator,
# poppler, WordNet for METEOR, real prose and a held-out Chinese face (vary.data.prose, fonts.HELDOUT_FONTS),
# chromium for the browser test.
APT_PKGS=(fonts-noto-cjk fonts-dejavu-core fonts-liberation poppler-utils
          tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim
          texlive-latex-base texlive-latex-recommended texlive-xetex texlive-lang-chinese
          wordnet-base wordnet-sense-index
          fortunes fortunes-zh python3-doc fonts-arphic-gbsn00lp)
[[ $DEV -eq 1 ]] && APT_PKGS+=(chromium)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  echo "[setup] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch first, pinned, so no dependency can pull another build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
if [[ $DEV -eq 1 ]]; then
  python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
else
  python3 -m pip install -q --disable-pip-version-check -e ".[eval]"
fi

# nltk data offline: WordNet from Debian (METEOR synonyms). nltk refuses symlinks outside its path,
# so the dict folder is copied, and Debian omits the 'lexnames' file nltk needs.
python3 -m vary.eval.nltk_data >/dev/null 2>&1 || echo "[setup] note: WordNet not installed; METEOR will use exact+stem matching"
echo "[setup] done"
