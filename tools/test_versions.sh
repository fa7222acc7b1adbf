#!/usr/bin/env bash
# Runs the smoke subset (tests/smoke.txt) against the oldest and the newest Lightning and MLflow of the supported
# range, each in a virtual environment over the installed one (--system-site-packages: torch, the test tools and
# this package come from there; only the pinned packages are installed into it). The full suite runs on the
# installed pair. Usage: tools/test_versions.sh [oldest|newest]...   (default: both)
# VERSIONS_VENV_DIR: where the environments are kept (default: $TMPDIR); an environment made before is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
VENVS="${VERSIONS_VENV_DIR:-${TMPDIR:-/tmp}}"

# The supported range; keep it in step with pyproject.toml's dependencies and the README.
# MLflow before 3.9 cannot open a SQL store with SQLAlchemy 2.1 (MLflow's own import), hence the pin.
OLDEST=(lightning==2.4.0 pytorch-lightning==2.4.0 mlflow==3.2.0 "sqlalchemy<2.1")
NEWEST=("lightning>=2.4,<2.7" "pytorch-lightning>=2.4,<2.7" "mlflow>=3.2,<4")

versions() {
  "$1" -c 'import lightning, pytorch_lightning, mlflow; print(f"lightning {lightning.__version__}, pytorch-lightning {pytorch_lightning.__version__}, mlflow {mlflow.__version__}")'
}

run_pair() {
  local name="$1"; shift
  local venv="$VENVS/lightning-mlflow-ext-$name"
  local spec="$*"
  local start=$SECONDS
  if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.spec" 2>/dev/null)" != "$spec" ]]; then
    rm -rf "$venv"
    "$PYTHON" -m venv --system-site-packages "$venv"
  fi
  # "oldest" installs its exact pins once; "newest" asks the index again every time (only what is needed).
  if [[ "$name" == newest || ! -f "$venv/.spec" ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$@"
    echo "$spec" > "$venv/.spec"
  fi
  local installed=$((SECONDS - start))
  local got; got="$(versions "$venv/bin/python")"
  if [[ "$name" == newest && "$got" == "$(versions "$PYTHON")" ]]; then
    echo "versions [$name]: $got is the installed pair, which the full suite tests (install ${installed}s)"
    return
  fi
  echo "versions [$name]: $got (install ${installed}s)"
  local -a tests
  mapfile -t tests < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$ROOT/tests/smoke.txt")
  (cd "$ROOT" && PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}")
  echo "versions [$name]: smoke subset passed in $((SECONDS - start))s (install ${installed}s)"
}

for pair in "${@:-oldest newest}"; do
  for name in $pair; do
    case "$name" in
      oldest) run_pair oldest "${OLDEST[@]}" ;;
      newest) run_pair newest "${NEWEST[@]}" ;;
      *) echo "tools/test_versions.sh: unknown pair '$name' (oldest, newest)" >&2; exit 2 ;;
    esac
  done
done
