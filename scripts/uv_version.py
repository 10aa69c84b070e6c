"""Print the version of uv that uv.lock pins (the `dev` group of pyproject.toml).

scripts/_venv.sh and the Dockerfile install that uv before anything else, so the
installer is as reproducible as what it installs.
"""

import sys
import tomllib
from pathlib import Path

lock = tomllib.loads((Path(__file__).resolve().parent.parent / "uv.lock").read_text())
versions = [package["version"] for package in lock["package"] if package["name"] == "uv"]
if not versions:
    sys.exit("error: uv.lock pins no uv: add it to the dev group of pyproject.toml")
print(versions[0])
