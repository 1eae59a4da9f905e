"""What `make run` prints on a terminal: one clean line per event, no library noise, nothing after the report.

The pipeline runs in a project copy on a pseudo-terminal (what a user's shell gives it: progress
bars on, as ``KDPRUNE_PROGRESS`` would force them) and its output is read as the terminal shows it:
a line is what follows the last carriage return before its newline.
"""
from __future__ import annotations

import os
import pty
import re
import select
import struct
import subprocess
import sys
import time

import pytest

from bench.project import REPO, free_port, make_project
from tests.conftest import TINY

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# what the libraries printed that tells a user nothing (issue 28 item 7)
NOISE = {
    "Ray's token warning": re.compile(r"Token authentication is enabled"),
    "Ray worker lines": re.compile(r"^\(\S+ pid=\d+\)"),
    "Ray's deduplication notes": re.compile(r"Ray deduplicates logs|repeated \d+x across cluster"),
    "MLflow's model warnings": re.compile(r"UserWarning|color_warning\("),
    "MLflow's registration lines": re.compile(r"Successfully registered model|Created version '"),
    "MLflow's artifact bars": re.compile(r"Downloading artifacts"),
    "DVC's per-file bars": re.compile(r"Collecting files and computing hashes|Checking cache in|Committing .* to cache"),
    "Prefect's telemetry notice": re.compile(r"Prefect collects anonymous usage data"),
    "DVC's lock file line": re.compile(r"Updating lock file"),
}


def visible_lines(raw: str) -> list[str]:
    """The lines a terminal shows: per newline, the text after the last carriage return that is not
    followed by nothing (a bar cleared by spaces and a return is gone), colours dropped."""
    out = []
    for line in ANSI.sub("", raw).split("\n"):
        segments = [s for s in line.split("\r") if s.strip()]
        if segments:
            out.append(segments[-1].rstrip())
    return out


def glued(lines: list[str]) -> list[str]:
    """Log lines that do not start at the line's start: something (a progress bar) was left before them."""
    return [l for l in lines if LOG_LINE.search(l) and not LOG_LINE.match(l)]


def run_on_a_terminal(cmd: list[str], cwd, env: dict, timeout_s: float = 900) -> str:
    """Run ``cmd`` with stdout and stderr on a new pseudo-terminal of 160 columns; its whole output."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    chunks, t0 = [], time.monotonic()
    try:
        while True:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{cmd} ran past {timeout_s}s:\n" + b"".join(chunks)[-3000:].decode(errors="replace"))
            r, _, _ = select.select([master], [], [], 1.0)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal closed: every process writing to it is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None and not select.select([master], [], [], 0.5)[0]:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
    assert proc.returncode == 0, b"".join(chunks)[-4000:].decode(errors="replace")
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_the_glued_line_is_seen_as_glued():
    lines = visible_lines("\rdistill: 2/18 students [00:06<00:41]17:57:09.847 | INFO    | Flow run 'x' - student 2/18\r\n"
                          "\rdistill: 3/18 students\r                      \r17:57:10.000 | INFO    | Flow run 'x' - ok\r\n")
    assert glued(lines) == [lines[0]] and lines[1].startswith("17:57:10.000")


def test_make_run_prints_one_clean_line_per_event_and_nothing_after_the_report(tmp_path):
    port = free_port()
    proj = make_project(tmp_path / "kdp", port, TINY)
    proj.env["PREFECT_HOME"] = str(tmp_path / "kdp" / ".prefect")
    env = {k: v for k, v in proj.env.items() if k not in ("KDPRUNE_PROGRESS", "CI")}
    env.update(TERM="xterm", COLUMNS="160")
    try:
        raw = run_on_a_terminal([sys.executable, "-m", "flows", "pipeline"], proj.path, env)
    finally:
        proj.stop_server()
    (tmp_path / "transcript.txt").write_text(raw)
    lines = visible_lines(raw)
    text = "\n".join(lines)
    assert re.search(r"^distill: \d+/\d+ students", raw.replace("\r", "\n"), re.M), \
        "no progress bar was drawn (not a terminal?):\n" + text[-3000:]
    assert glued(lines) == [], "log lines glued to a progress bar:\n" + "\n".join(glued(lines)[:5])
    noise = {what: [l for l in lines if p.search(l)] for what, p in NOISE.items()}
    assert {k: v for k, v in noise.items() if v} == {}, "library noise on the terminal"
    # the report, then the pipeline's own closing lines, and nothing after them
    report = next(i for i, l in enumerate(lines) if l.startswith("# kdprune report"))
    end = next(i for i, l in enumerate(lines) if l.startswith("[kdprune] compare the students"))
    assert end == len(lines) - 1, "printed after the report's last line:\n" + "\n".join(lines[end:])
    after = lines[report:end]
    assert not [l for l in after if re.match(r"^\(|^\[\d", l) or "Task run" in l], "\n".join(after[-30:])


def test_a_log_line_while_a_bar_is_drawn_gets_a_line_of_its_own():
    """telemetry.progress on a terminal: Prefect's console handler (a stream handler on the root logger)
    writes while a bar is drawn; each record is a line of its own, and the handler is back after the bar."""
    code = (
        "import logging, sys, time\n"
        "from prefect.logging.handlers import PrefectConsoleHandler\n"
        "h = PrefectConsoleHandler(stream=sys.stderr)\n"
        "h.setFormatter(logging.Formatter('%(asctime)s.%(msecs)03d | %(levelname)-7s | %(message)s', '%H:%M:%S'))\n"
        "logging.getLogger().addHandler(h); logging.getLogger().setLevel(logging.INFO)\n"
        "from telemetry.progress import progress\n"
        "with progress('distill', 3, 'student') as bar:\n"
        "    for i in range(3):\n"
        "        bar.update(1); bar.refresh(); time.sleep(0.15)\n"
        "        logging.getLogger('x').info(f'student {i + 1}/3 done')\n"
        "assert logging.getLogger().handlers == [h], logging.getLogger().handlers\n"
        "logging.getLogger('x').info('after the bar')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KDPRUNE_PROGRESS", "CI")}
    env["PYTHONPATH"] = str(REPO)
    raw = run_on_a_terminal([sys.executable, "-c", code], REPO, env, timeout_s=120)
    lines = visible_lines(raw)
    assert "distill: 1/3 students" in raw, raw  # the bar was drawn
    assert glued(lines) == [], "\n".join(lines)
    assert [l.split(" | ")[-1] for l in lines if LOG_LINE.match(l)] == [
        "student 1/3 done", "student 2/3 done", "student 3/3 done", "after the bar"], lines
