"""`soci-native`, `-h`, `--help`, `COMMAND --help` and `--version` answered without importing
click (soci_native/entry.py): byte for byte what click prints, for every terminal width, and
never from a saved text that the code has outgrown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# argv[0] as the console script has it (click names the program after it)
ENTRY = "import sys; sys.argv[0] = 'soci-native'; from soci_native.entry import main; main()"
CLICK = "import sys; sys.argv[0] = 'soci-native'; from soci_native.cli import main; main()"


def run(code: str, *args: str, cache: Path | str, columns: str | None = None,
        profile: bool = False, root: str | None = None, extra: dict[str, str] | None = None,
        cwd: Path | None = None) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr less import-time lines, whether click was imported)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "SOCI_NATIVE_ROOT")
           and not (k.startswith("_") and k.endswith("_COMPLETE"))}
    env.update(extra or {})
    env["XDG_CACHE_HOME"] = str(cache)
    if root is not None:
        env["SOCI_NATIVE_ROOT"] = root
    if columns is not None:
        env["COLUMNS"] = columns
    if profile:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    # stdin/stdout/stderr are pipes: no terminal, so the width comes from COLUMNS or is 80
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=60, cwd=cwd)
    lines = p.stderr.splitlines(keepends=True)
    imports = [ln for ln in lines if ln.startswith("import time:")]
    err = "".join(ln for ln in lines if not ln.startswith("import time:"))
    return p.returncode, p.stdout, err, any(ln.split("|")[-1].strip() == "click" for ln in imports)


@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["--version"]])
@pytest.mark.parametrize("columns", [None, "80", "200", "60", "0", "junk"])
def test_same_bytes_as_click(tmp_path: Path, args: list[str], columns: str | None) -> None:
    want = run(CLICK, *args, cache=tmp_path / "ref", columns=columns)[:3]
    assert want[1] or want[2]
    first = run(ENTRY, *args, cache=tmp_path, columns=columns, profile=True)
    second = run(ENTRY, *args, cache=tmp_path, columns=columns, profile=True)
    assert first[:3] == want and second[:3] == want
    narrow = columns == "60"
    # the first full-width help renders through click and saves; the next one doesn't need it
    assert second[3] is (narrow and args != ["--version"])
    assert (tmp_path / "soci-native" / "help-78.txt").exists() is \
        (not narrow and args != ["--version"])


def commands() -> list[str]:
    """Every top-level command, as click lists them."""
    import click

    from soci_native.cli import main

    with click.Context(main, info_name="soci-native") as ctx:
        return main.list_commands(ctx)


def test_every_command_s_help_is_click_s(tmp_path: Path) -> None:
    from soci_native.entry import COMMANDS

    names = commands()
    assert {"ztoc", "index", "mount", "create"} <= set(names) == COMMANDS
    for name in names:
        for flag in ("--help", "-h"):
            want = run(CLICK, name, flag, cache=tmp_path / "ref")[:3]
            assert want[0] == 0 and f"Usage: soci-native {name} " in want[1], (name, want)
            first = run(ENTRY, name, flag, cache=tmp_path, profile=True)
            second = run(ENTRY, name, flag, cache=tmp_path, profile=True)
            assert first[:3] == want and second[:3] == want, (name, flag)
            assert first[3] is (flag == "--help") and not second[3], (name, flag)
        assert (tmp_path / "soci-native" / f"help-78-{name}.txt").exists()


@pytest.mark.parametrize("columns", [None, "200", "60", "junk"])
def test_a_command_s_help_at_every_width(tmp_path: Path, columns: str | None) -> None:
    want = run(CLICK, "ztoc", "--help", cache=tmp_path / "ref", columns=columns)[:3]
    first = run(ENTRY, "ztoc", "--help", cache=tmp_path, columns=columns)
    second = run(ENTRY, "ztoc", "--help", cache=tmp_path, columns=columns, profile=True)
    assert first[:3] == want and second[:3] == want
    assert second[3] is (columns == "60")


def test_what_click_refuses_before_a_command_s_help_is_click_s(tmp_path: Path) -> None:
    """No such command; a $SOCI_NATIVE_ROOT click refuses (it checks the top level's options
    first), even with the help saved: click's error, from click."""
    for args in (["nope", "--help"], ["ztoc", "--nope"], ["ztoc", "info", "--help"],
                 ["Ztoc", "--help"], ["zt", "--help"]):
        want = run(CLICK, *args, cache=tmp_path / "ref")[:3]
        assert run(ENTRY, *args, cache=tmp_path)[:3] == want, args
    assert not list(tmp_path.glob("soci-native/help-78-*"))  # nothing saved for them
    run(ENTRY, "ztoc", "--help", cache=tmp_path)
    # as a case-insensitive file system would find it: still no command `Ztoc` to click
    saved = tmp_path / "soci-native" / "help-78-ztoc.txt"
    (saved.parent / "help-78-Ztoc.txt").write_bytes(saved.read_bytes())
    want = run(CLICK, "Ztoc", "--help", cache=tmp_path / "ref")[:3]
    assert want[0] == 2 and run(ENTRY, "Ztoc", "--help", cache=tmp_path)[:3] == want
    afile = tmp_path / "afile"
    afile.write_text("")
    want = run(CLICK, "ztoc", "--help", cache=tmp_path / "ref", root=str(afile))[:3]
    assert want[0] == 2 and "is a file" in want[2]
    code, out, err, clicked = run(ENTRY, "ztoc", "--help", cache=tmp_path, root=str(afile),
                                  profile=True)
    assert (code, out, err) == want and clicked
    ok = run(ENTRY, "ztoc", "--help", cache=tmp_path, root=str(tmp_path / "none"),
             profile=True)
    assert ok[0] == 0 and not ok[3]


def test_a_changed_module_is_rendered_again(tmp_path: Path) -> None:
    run(ENTRY, "--help", cache=tmp_path)
    saved = tmp_path / "soci-native" / "help-78.txt"
    sig, _, text = saved.read_text().partition("\n")
    assert "cli.py:" in sig and "click" in sig and "Usage: soci-native" in text
    saved.write_text(sig.replace("cli.py:", "cli.py:1") + "\nstale text")
    code, out, _, clicked = run(ENTRY, "--help", cache=tmp_path, profile=True)
    assert code == 0 and clicked and out == text + "\n"
    assert saved.read_text() == f"{sig}\n{text}"  # saved again, current


def test_another_locale_is_rendered_again(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run(ENTRY, "--help", cache=tmp_path)
    monkeypatch.setenv("LANG", "C" if os.environ.get("LANG") == "C.UTF-8" else "C.UTF-8")
    code, _, _, clicked = run(ENTRY, "--help", cache=tmp_path, profile=True)
    assert code == 0 and clicked  # the saved text was for another locale


def test_unwritable_cache_still_answers(tmp_path: Path) -> None:
    (tmp_path / "soci-native").write_text("not a directory")
    want = run(CLICK, "--help", cache=tmp_path / "ref")
    assert run(ENTRY, "--help", cache=tmp_path)[:3] == want[:3]


def test_other_commands_go_through_click(tmp_path: Path) -> None:
    code, out, _, clicked = run(ENTRY, "ztoc", "ls", "--help", cache=tmp_path, profile=True)
    assert code == 0 and clicked and "Usage: soci-native ztoc ls" in out
    code, _, err, _ = run(ENTRY, "--nope", cache=tmp_path)
    assert code == 2 and "No such option '--nope'" in err


def test_completion_is_click_s_with_a_help_saved(tmp_path: Path) -> None:
    """Shell completion runs the program with no arguments: the saved top-level help must
    not answer it (it did, as a usage error, from the second Tab on)."""
    comp = {"COMP_WORDS": "soci-native zt", "COMP_CWORD": "1",
            "_SOCI_NATIVE_COMPLETE": "bash_complete"}
    want = run(CLICK, cache=tmp_path / "ref", extra=comp)[:3]
    assert want[0] == 0 and "plain,ztoc" in want[1].splitlines(), want
    assert run(ENTRY, cache=tmp_path, extra=comp)[:3] == want  # nothing saved yet
    run(ENTRY, cache=tmp_path)  # `soci-native` alone: saves the help
    assert (tmp_path / "soci-native" / "help-78.txt").exists()
    assert run(ENTRY, cache=tmp_path, extra=comp)[:3] == want
    run(ENTRY, "ztoc", "--help", cache=tmp_path)
    comp.update(COMP_WORDS="soci-native ztoc --he", COMP_CWORD="2")
    want = run(CLICK, "ztoc", "--help", cache=tmp_path / "ref", extra=comp)[:3]
    assert "plain,--help" in want[1].splitlines(), want
    assert run(ENTRY, "ztoc", "--help", cache=tmp_path, extra=comp)[:3] == want


def closed_pipe(code: str, args: list[str], cache: Path, to_stderr: bool) -> tuple[int, bytes]:
    """(exit code, what the other stream got) when stdout (or stderr) is a pipe whose reader
    is gone before anything is written (`soci-native --help | true`)."""
    r, w = os.pipe()
    os.close(r)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "SOCI_NATIVE_ROOT")}
    env["XDG_CACHE_HOME"] = str(cache)
    streams = {"stderr": w, "stdout": subprocess.PIPE} if to_stderr else \
        {"stdout": w, "stderr": subprocess.PIPE}
    try:
        p = subprocess.run([sys.executable, "-c", code, *args], env=env, timeout=60,
                           stdin=subprocess.DEVNULL, **streams)
    finally:
        os.close(w)
    return p.returncode, p.stdout if to_stderr else p.stderr


def test_a_closed_pipe_is_click_s_exit(tmp_path: Path) -> None:
    """A reader gone (`| head`, `| true`): exit 1 and nothing on stderr, as click gives it,
    from the saved help too (it printed a BrokenPipeError traceback)."""
    for args in (["--help"], ["ztoc", "--help"], []):
        run(ENTRY, *args, cache=tmp_path)
        assert run(ENTRY, *args, cache=tmp_path, profile=True)[3] is False  # saved
        want = closed_pipe(CLICK, args, tmp_path / "ref", to_stderr=not args)
        assert want == (1, b""), (args, want)
        assert closed_pipe(ENTRY, args, tmp_path, to_stderr=not args) == want, args


def test_a_link_at_the_temporary_name_is_not_followed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """save() makes its temporary file new: a link planted at that name (this process's
    pid) is neither written through nor left as the saved help."""
    from soci_native import entry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "soci-native").mkdir()
    tmp = Path(f"{entry.cache_file('')}.{os.getpid()}.tmp")
    tmp.symlink_to(victim)
    entry.save("sig", "", "text")
    assert victim.read_text() == "keep" and tmp.is_symlink()
    assert not Path(entry.cache_file("")).exists()
    tmp.unlink()
    entry.save("sig", "", "text")  # the name free again: saved
    assert entry.read_saved("sig", "") == "text" and not tmp.exists()


def test_what_is_no_saved_help_is_not_read(tmp_path: Path) -> None:
    """A link, a FIFO or a big file at the saved help's name: click renders the help (the
    same bytes) and saves it in their place; no link is followed, no FIFO waited on."""
    want = run(CLICK, "--help", cache=tmp_path / "ref")[:3]
    saved = tmp_path / "soci-native" / "help-78.txt"
    run(ENTRY, "--help", cache=tmp_path)
    good = saved.read_text()
    sig = good.partition("\n")[0]
    victim = tmp_path / "victim"
    victim.write_text(f"{sig}\nnot the help")
    for plant in ("link", "fifo", "big"):
        saved.unlink()
        if plant == "link":
            saved.symlink_to(victim)
        elif plant == "fifo":
            os.mkfifo(saved)
        else:
            saved.write_text(f"{sig}\n" + "x" * 70_000)
        code, out, err, clicked = run(ENTRY, "--help", cache=tmp_path, profile=True)
        assert (code, out, err) == want and clicked, plant
        assert saved.is_file() and not saved.is_symlink() and saved.read_text() == good, plant
    assert victim.read_text() == f"{sig}\nnot the help"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the cache to another user")
def test_a_cache_of_another_user_s_is_not_used(tmp_path: Path) -> None:
    run(ENTRY, "--help", cache=tmp_path)
    saved = tmp_path / "soci-native" / "help-78.txt"
    before = saved.read_text()
    os.chown(saved.parent, 1, -1)
    code, out, _, clicked = run(ENTRY, "--help", cache=tmp_path, profile=True)
    assert code == 0 and clicked and out == before.partition("\n")[2] + "\n"
    saved.unlink()
    assert run(ENTRY, "--help", cache=tmp_path)[0] == 0 and not saved.exists()  # not saved


def test_a_relative_cache_base_is_not_used(tmp_path: Path) -> None:
    """A relative $XDG_CACHE_HOME is ignored (~/.cache instead, as the XDG spec says); a
    home that is no absolute path either: nothing is saved (the help is click's each time),
    never a cache under the directory the command runs in."""
    want = run(CLICK, "--help", cache=tmp_path / "ref")[:3]
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    got = run(ENTRY, "--help", cache="rel", extra={"HOME": str(home)}, cwd=work)
    assert got[:3] == want and (home / ".cache" / "soci-native" / "help-78.txt").is_file()
    for base in ("rel", ""):
        for _ in range(2):
            code, out, err, clicked = run(ENTRY, "--help", cache=base, profile=True,
                                          extra={"HOME": "relhome"}, cwd=work)
            assert (code, out, err) == want and clicked, base
    assert not list(work.iterdir())


def test_click_from_elsewhere_is_another_signature(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same click files (sizes and mtimes kept) loaded from another directory, or
    another version's dist-info beside them, sign differently: a switched venv renders
    the help again."""
    import shutil

    import click

    from soci_native import entry

    before = entry.signature()
    site = tmp_path / "site"
    shutil.copytree(Path(click.__file__).parent, site / "click", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(site))
    moved = entry.signature()
    assert moved != before and str(site / "click") in moved
    assert moved.split(" click ")[1].split()[2:] == before.split(" click ")[1].split()[2:]
    (site / "click-0.0.1.dist-info").mkdir()
    assert " 0.0.1 " in entry.signature() and entry.signature() != moved


def test_console_script_is_the_entry() -> None:
    assert 'soci-native = "soci_native.entry:main"' in (REPO / "pyproject.toml").read_text()
