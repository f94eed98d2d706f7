"""The documented library API (docs/api.md) works as written and type-checks from outside the
package (py.typed): open an image, build its index into a store, read and query a zTOC,
stream a file; checked against tarfile and the CLI's own view of the store."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_cli import SMALL, STDLIB, blob, image, layers_of  # noqa: F401 (fixture)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_exports_are_one_list_and_typed() -> None:
    import soci_native as sn

    assert sorted(sn._EXPORTS) == sn.__all__
    for name in sn.__all__:
        assert getattr(sn, name) is not None, name
    assert (Path(sn.__file__).parent / "py.typed").exists()
    # importing the package loads no C extension and no SQLite
    code = "import soci_native, sys; print('soci_native._core' in sys.modules, 'sqlite3' in " \
           "sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_documented_flow(image: Path, tmp_path: Path) -> None:  # noqa: F811
    import soci_native as sn

    with sn.open_image(f"oci:{image}:t") as src, sn.Store(tmp_path / "store") as store:
        (img,) = sn.resolve(src)
        opts = sn.BuildOptions(span_size=256 << 10, min_layer_size=1000, jobs=2,
                               prefetch_paths=("/usr/lib/python/json/decoder.py", "/nowhere"))
        result = sn.build_index(src, store, img, opts)
        assert [lr.status for lr in result.layers] == ["built"] * 3
        assert result.prefetch_digests and len(result.warnings) == 1
        assert "/nowhere" in result.warnings[0]
        assert [r.digest for r in store.list_artifacts(type="soci_index")] == [result.digest]
        lr = result.layers[0]
        assert lr.ztoc_digest is not None
        raw = store.read_blob(lr.ztoc_digest)
        z = sn.read_ztoc(raw)
        with tarfile.open(blob(image, lr.layer.digest)) as tf:
            members = tf.getmembers()
        assert len(z.files) == len(members)
        f = sn.find_file(raw, "usr/lib/python/json/decoder.py")
        assert f is not None and f.type == "reg"
        out = io.BytesIO()
        read = sn.stream_file(src, lr.layer.digest, z, f, out)
        assert out.getvalue() == (STDLIB / "json/decoder.py").read_bytes()
        assert 0 < read <= z.compressed_archive_size
    with pytest.raises(sn.ImageError):
        sn.open_image(f"oci:{tmp_path / 'missing'}")


def test_the_doc_example_type_checks(tmp_path: Path) -> None:
    """The example in docs/api.md, as a user's file, under mypy --strict: the package's
    hints reach its users (py.typed) and the example uses the API as typed."""
    text = (DOCS / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    user = tmp_path / "user_code.py"
    user.write_text(example.group(1))
    env = dict(os.environ, MYPYPATH="")
    p = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                        "--cache-dir", str(tmp_path / "mypy"), str(user)], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
