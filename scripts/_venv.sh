# Sourced by scripts/dev and scripts/test: make .venv (if missing or broken) and install
# exactly what uv.lock pins, with the given extra, skipping it when nothing changed since
# last time. uv itself (the version uv.lock pins) is bootstrapped into .venv with pip.
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
  local extra="$1" python stamp wanted uv_version exact=()
  if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$(find_python)"
    echo "Creating .venv with $("$python" --version)..." >&2
    rm -rf .venv
    "$python" -m venv .venv
  fi
  stamp=".venv/.clinic-notify-installed-$extra"
  wanted="$(.venv/bin/python -c '
import hashlib
print(hashlib.sha256(open("pyproject.toml", "rb").read() + open("uv.lock", "rb").read()).hexdigest())
')"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! .venv/bin/python -c 'import app' 2>/dev/null; then
    echo "Installing clinic-notify[$extra] from uv.lock into .venv..." >&2
    uv_version="$(.venv/bin/python scripts/uv_version.py)"
    if ! .venv/bin/uv --version 2>/dev/null | grep -q "^uv $uv_version "; then
      .venv/bin/python -m pip install -qq --disable-pip-version-check "uv==$uv_version"
    fi
    # The test extra holds the embedded one: `test` makes .venv exactly the lock's
    # (removing what the lock no longer has), `embedded` adds without removing, so
    # ./scripts/dev and ./scripts/test do not undo each other's installs.
    [ "$extra" = test ] || exact=(--inexact)
    UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never .venv/bin/uv sync --quiet \
      --locked --extra "$extra" --python .venv/bin/python "${exact[@]}"
    echo "$wanted" >"$stamp"
  fi
}
