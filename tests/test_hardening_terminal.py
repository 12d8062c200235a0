"""Terminal safety (issue 8, class 8): no untrusted control byte reaches the operator's terminal.

Hostile phase names, classes, attrs and a hostile comm go through the real
daemon core and store, then through every renderer: `status`, `top` (both the
--once text and the painted screen), `spans`, `phases`, and the console log.
"""

from __future__ import annotations

import os
import re

import structlog
from gpuos_client import protocol as P
from gpuos_hintd import logs, procfs
from gpuos_hintd.cli import main as cli
from gpuos_hintd.cli import status, top
from gpuos_hintd.config import Config
from gpuos_hintd.safetext import safe
from gpuos_hintd.service import HintService
from gpuos_hintd.store import Store

EVIL = "x\x1b]52;c;SGVsbG8=\x07\x1b]0;pwned\x07\x1b[2J\nFORGED ROW\r\u202eevil\x9b"
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")

PID = os.getpid()
PST = procfs.start_ticks(PID)


def _clean(text: str, allowed_newlines: bool = True) -> None:
    assert not FORBIDDEN.search(text), repr(FORBIDDEN.search(text).group())
    for line in text.splitlines():
        assert not line.startswith("FORGED"), line


def test_safe_escapes_visibly():
    assert safe("a\x1bb\nc\x07\u202e") == "a\\x1bb\\x0ac\\x07\\u202e"
    assert safe(safe(EVIL)) == safe(EVIL)  # idempotent: escaping twice changes nothing
    assert safe("plain/phase-名前") == "plain/phase-名前"


def _service_with_evil(tmp_path):
    store = Store(tmp_path / "state")
    svc = HintService(Config(state_dir=tmp_path / "state"), store)
    name = EVIL[: P.LIMITS.max_name_len]
    evs = [
        [P.HELLO, 1, 1, {"argv": [EVIL]}],
        [P.CLASS, 1, 1, name],
        [P.PHASE_BEGIN, 2, 1, 1, 0, name, name, {"k": EVIL[:200]}],
        [P.PHASE_END, 3, 1, 1, "ok", None],
        [P.PHASE_BEGIN, 4, 1, 2, 0, name, None, None],
    ]
    svc.ingest(P.encode_batch(PID, PST, 1, 0, evs), (PID, 0, 0), b"r")
    client = next(iter(svc.clients.values()))
    client.comm = EVIL  # what /proc/PID/comm may hold (a process names itself)
    st = svc.status().to_dict()  # while the phase is open
    svc.shutdown()  # closes every span (no samplers here to finalise them at a tick) and writes them
    store.flush(5)
    return st, store


def test_status_and_top_render_no_control_bytes(tmp_path):
    st, store = _service_with_evil(tmp_path)
    try:
        st["store"]["write_errors"], st["store"]["last_error"] = 1, EVIL
        assert "\x1b" in repr(st) or "\\x1b" in repr(st)  # the hostile text is really there
        _clean(status.render_status(st))
        lines = top.render(st, top.Rates(), 200, None)
        for text, _style in lines:
            _clean(top.safe(text))
        screen = top.paint(lines, 200, 50, "footer")
        # paint writes its own CSI sequences; none of the hostile ones (OSC, BEL, 2J) survive
        assert "\x07" not in screen and "\x1b]" not in screen and "\x1b[2J" not in screen and "\u202e" not in screen
        assert "FORGED" not in "".join(ln.split("\x1b[K")[0][:9] for ln in screen.split("\r\n"))
    finally:
        store.close()


def test_spans_and_phases_tables_render_no_control_bytes(tmp_path, capsys):
    _st, store = _service_with_evil(tmp_path)
    store.close()
    for cmd in (["spans"], ["phases"]):
        assert cli.main(["--state-dir", str(tmp_path / "state"), *cmd]) == 0
        out = capsys.readouterr().out
        assert "\\x1b]52" in out  # shown, escaped
        _clean(out)


def test_console_log_renders_no_control_bytes(capsys):
    saved = structlog.get_config()
    try:
        logs.setup("info", "console")
        structlog.get_logger("t").warning(EVIL, comm=EVIL, detail=[EVIL], **{EVIL[:8]: 1})
        err = capsys.readouterr().err
        assert "\\x1b]52" in err
        _clean(err)
        assert len(err.strip().splitlines()) == 1
    finally:
        structlog.configure(**saved)  # not bound to capsys's stderr, which closes after this test
