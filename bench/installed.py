"""A copy of soci_native laid out as `pip install` (not `pip install -e`) would lay it out, so
start-up timings measure what a user's installation pays.

The project venv has an editable install: a meta-path finder of scikit-build-core answers
every `import soci_native...` and pulls importlib.util, contextlib and friends into each
start (several ms) that no wheel install pays. This builds bench/data/inst-venv/: a venv
without pip whose site-packages holds a byte-compiled copy of soci_native (sources and the
built C extensions) and a .pth line reaching the project venv's site-packages for the
dependencies (click, urllib3, ...). .pth files in a directory added by a .pth line are not
run, so the editable finder stays out. bin/soci-native is the console script pip writes.
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import soci_native

HERE = Path(__file__).resolve().parent
VENV = HERE / "data" / "inst-venv"
SCRIPT = """#!{python}
import sys
from soci_native.entry import main
if __name__ == '__main__':
    sys.exit(main())
"""


def extensions() -> list[Path]:
    """The built C extensions (_core, _fuse, ...), wherever the install put them."""
    from soci_native import _core

    return sorted(Path(_core.__file__).parent.glob("_*.so"))


def make() -> Path:
    """(Re)builds the copy from the current sources; returns its bin/soci-native."""
    src = Path(soci_native.__file__).resolve().parent
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
    py = VENV / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True,
                               text=True).stdout.strip())
    dest = site / "soci_native"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for ext in extensions():
        shutil.copy2(ext, dest / ext.name)
    compileall.compile_dir(str(dest), quiet=1)
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = VENV / "bin" / "soci-native"
    script.write_text(SCRIPT.format(python=py))
    script.chmod(0o755)
    return script


def python() -> Path:
    return VENV / "bin" / "python"


def env(**extra: str) -> dict[str, str]:
    """The environment for the copy: no PYTHONPATH that would reach the checkout."""
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(extra)
    return e
