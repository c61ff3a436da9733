# Sourced by the GPU scripts. On a machine without network access (the lent GPU machines) install the carried
# Python 3.12 wheels (.whl/) and fonts (.devcarry/fonts) first and run vary from this checkout; the README's
# "On a machine without network access" says how to make them. A no-op where neither folder exists.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/.devcarry/py:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .devcarry/fonts ]; then mkdir -p ~/.fonts && cp .devcarry/fonts/* ~/.fonts/; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
vary() { python3 -m vary "$@"; }
