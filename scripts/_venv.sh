# Sourced by scripts/demo and scripts/test: make .venv (if missing) and install the project into it.
# Usage: ensure_venv EXTRAS   (EXTRAS is "" or "[test]")

find_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "fednode needs Python 3.11 or newer; none found on PATH" >&2
  return 1
}

ensure_venv() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    local python
    python=$(find_python)
    echo "creating .venv with $python" >&2
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  echo "installing fednode${extras} into .venv (log: .venv/install.log)" >&2
  if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".${extras}" >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "installation failed; see the output above" >&2
    return 1
  fi
}
