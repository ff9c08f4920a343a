"""The layers point downward, and `import tether` stays light."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys


def test_layers_point_downward():
    lint = shutil.which("lint-imports", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency: `uv sync` installs it"
    out = subprocess.run([lint], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_tether_loads_no_sdk_database_pricing_or_cli_library():
    code = "import sys, json, tether; print(json.dumps(sorted(sys.modules)))"
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    heavy = {"openai", "httpx2", "sqlalchemy", "genai_prices", "typer", "rich", "pydantic", "jsonschema"}
    assert not heavy & {m.split(".")[0] for m in mods}


def test_lint_and_types_are_clean():
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    for cmd in (["ruff", "check", "src", "tests"], ["mypy", "src/tether"]):
        out = subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
