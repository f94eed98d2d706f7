"""Progress on stderr for long commands (create, convert, push): what fits where it goes.

On a terminal: one live bar per layer with a total line (throughput, ETA), or only the total
line when there are more layers than terminal rows (bars would pile up in the scrollback).
Elsewhere (CI logs, files): one line every ``SOCI_NATIVE_PROGRESS_INTERVAL`` seconds
(default 10) while work runs, nothing in between. Per-layer results follow at the end.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import click

if TYPE_CHECKING:
    from soci_native.build import IndexResult
    from soci_native.images import Descriptor

BAR = 24


class UploadSink(Protocol):
    """What uploaders report to: each blob as it is sent, then the end."""

    def sent(self, digest: str, size: int) -> None: ...
    def close(self) -> None: ...


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _eta(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _interval() -> float:
    try:
        return max(0.05, float(os.environ.get("SOCI_NATIVE_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


class Meter:
    """Bytes done of a total, with throughput and ETA since it started."""

    def __init__(self, total: int, what: str, unit: str) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.bytes = 0
        self.items_done = 0
        self.items = 0
        self.start = time.monotonic()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.bytes / elapsed
        done = min(self.bytes, self.total)
        frac = done / self.total if self.total else 1.0
        eta = f", ETA {_eta((self.total - done) / rate)}" if rate > 0 and done < self.total \
            else ""
        return (f"{self.what}: {self.items_done}/{self.items} {self.unit}, {size_text(done)} / "
                f"{size_text(self.total)} ({frac:.0%}), {size_text(rate)}/s{eta}")


class _Ticker:
    """Prints ``line()`` every interval on a daemon thread until stopped (non-terminal
    output: a CI log gets a line now and then, not a bar's every redraw)."""

    def __init__(self, line: Callable[[], str]) -> None:
        self.line = line
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="progress")
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(_interval()):
            click.echo(self.line(), err=True)

    def stop(self) -> None:
        self.stopped.set()


def terminal_lines() -> int:
    """shutil.get_terminal_size's rows (LINES, else stdout's terminal, else 24) without
    importing shutil (and with it bz2, lzma and fnmatch) at every start."""
    try:
        lines = int(os.environ.get("LINES", ""))
    except ValueError:
        lines = 0
    if lines <= 0:
        try:
            lines = os.get_terminal_size(sys.__stdout__.fileno()).lines  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            lines = 0
    return lines or 24


class Reporter:
    """Layer progress for create/convert, then the per-layer result lines."""

    def __init__(self, layers: Sequence[Descriptor], quiet: bool) -> None:
        self.sizes = {d.digest: d.size for d in layers}  # each distinct layer once
        self.done = dict.fromkeys(self.sizes, 0)
        self.quiet = quiet
        self.live = sys.stderr.isatty() and not quiet
        rows = terminal_lines()
        self.summary_only = len(self.sizes) + 2 > rows  # bars would not fit the screen
        self.meter = Meter(sum(self.sizes.values()), "indexing", "layers")
        self.meter.items = len(self.sizes)
        self.lock = threading.Lock()
        self.last = 0.0
        self.drawn = 0  # lines on the screen now
        self.ticker = _Ticker(self._line) if not self.live and not quiet else None

    def callback(self) -> Callable[[Descriptor, int], None] | None:
        """Only a live display needs byte counts; without one layers are read in C."""
        return self.progress if self.live else None

    def layer_done(self, layer: Descriptor) -> None:
        with self.lock:
            if self.done.get(layer.digest, 0) < self.sizes.get(layer.digest, 0):
                self.meter.bytes += self.sizes[layer.digest] - self.done[layer.digest]
                self.done[layer.digest] = self.sizes[layer.digest]
            self.meter.items_done += 1
        if self.live:
            self._draw()

    def _line(self) -> str:
        with self.lock:
            return self.meter.line()

    def progress(self, layer: Descriptor, n: int) -> None:
        with self.lock:
            before = self.done.get(layer.digest, 0)
            self.done[layer.digest] = before + n
            size = self.sizes.get(layer.digest, 0)
            self.meter.bytes += max(0, min(before + n, size) - min(before, size))
        now = time.monotonic()
        if self.live and now - self.last > 0.1:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        with self.lock:
            lines = [] if self.summary_only else [self._bar(d, s) for d, s in self.sizes.items()]
            lines.append(self.meter.line() + "\033[K")
        up = f"\033[{self.drawn}F" if self.drawn else ""  # back to the first line drawn
        click.echo(up + "\n".join(lines), err=True)
        self.drawn = len(lines)

    def _bar(self, digest: str, size: int) -> str:
        got = min(self.done.get(digest, 0), size)
        frac = got / size if size else 1.0
        bar = "#" * int(frac * BAR)
        return (f"{digest[7:19]}  [{bar:<{BAR}}] {frac:4.0%}  "
                f"{size_text(got)} / {size_text(size)}\033[K")

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        if self.drawn:  # the live lines make way for the results
            click.echo(f"\033[{self.drawn}F\033[J", err=True, nl=False)
            self.drawn = 0

    def result(self, r: IndexResult) -> None:
        self.close()
        for w in r.warnings:  # even with --quiet/--json: a path found nowhere is a mistake
            click.echo(f"warning: {w}", err=True)
        if self.quiet:
            return
        for lr in r.layers:
            what = {"built": f"ztoc {lr.ztoc_digest}",
                    "reused": f"ztoc {lr.ztoc_digest} (already exists)",
                    "skipped": f"ztoc skipped: {lr.reason}"}[lr.status]
            click.echo(f"layer {lr.layer.digest} -> {what}", err=True)


class Uploads:
    """Upload progress (convert to a registry, push): blobs and bytes sent, a live line on a
    terminal, else a line every interval; ``sent(digest, size)`` after each blob."""

    def __init__(self, sizes: Sequence[int], quiet: bool) -> None:
        self.meter = Meter(sum(sizes), "uploading", "blobs")
        self.meter.items = len(sizes)
        self.quiet = quiet
        self.live = sys.stderr.isatty() and not quiet
        self.lock = threading.Lock()
        self.ticker = _Ticker(self._line) if not self.live and not quiet and sizes else None
        self.shown = False

    def _line(self) -> str:
        with self.lock:
            return self.meter.line()

    def sent(self, digest: str, size: int) -> None:
        with self.lock:
            self.meter.bytes += size
            self.meter.items_done += 1
            line = self.meter.line()
        if self.live:
            click.echo(("\033[1F" if self.shown else "") + line + "\033[K", err=True)
            self.shown = True

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        if not self.quiet and self.meter.items:
            click.echo(f"uploaded {self.meter.items_done} of {self.meter.items} blobs "
                       f"({size_text(self.meter.bytes)})", err=True)
