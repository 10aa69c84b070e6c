# Sourced by scripts/dev and scripts/test: make .venv (if missing or broken) and install
# the package with the given extra, skipping pip when nothing changed since last time.
# Usage: ensure_venv EXTRA   (run from the repository root)

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_venv() {
  local extra="$1" python stamp wanted
  if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$(find_python)"
    echo "Creating .venv with $("$python" --version)..." >&2
    rm -rf .venv
    "$python" -m venv .venv
  fi
  stamp=".venv/.clinic-notify-installed-$extra"
  wanted="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! .venv/bin/python -c 'import app' 2>/dev/null; then
    echo "Installing clinic-notify[$extra] into .venv (quietly; the first time takes a while)..." >&2
    .venv/bin/python -m pip install -qq --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -qq --disable-pip-version-check -e ".[$extra]"
    echo "$wanted" >"$stamp"
  fi
}
