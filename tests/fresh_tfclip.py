"""``tfclip`` run in a fresh interpreter, reporting which of torch, open_clip and torchvision it imported: the proof
that a query with an exported model never loads them."""

import json
import subprocess
import sys
from pathlib import Path

TORCH_MODULES = ("torch", "open_clip", "torchvision")
FRESH_TFCLIP = f"""
import json, sys
from tfclip_cli.cli import main
sys.argv = ["tfclip", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as stop:
    code = stop.code
loaded = sorted(name for name in {TORCH_MODULES!r} if name in sys.modules)
print(json.dumps({{"exit": code, "loaded": loaded}}), file=sys.stderr)
"""


def run_fresh_tfclip(*args: object) -> tuple[dict, dict]:
    """``tfclip ARGS --json`` in a new process: (its JSON answer, ``{"exit": code, "loaded": [torch modules]}``)."""
    run = subprocess.run([sys.executable, "-c", FRESH_TFCLIP, json.dumps([*map(str, args), "--json"])],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    status = json.loads(run.stderr.strip().splitlines()[-1])
    assert status["exit"] == 0, run.stderr
    return json.loads(run.stdout), status
