"""The SQLite store: a full disk loses nothing already taken, and history survives."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest
from conftest import start_daemon


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs as a full disk"
    if not shutil.which("mount"):
        return "mount(8) missing"
    return None


@pytest.mark.root
def test_full_disk_counts_errors_keeps_running_and_loses_nothing(tmp_path):
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], check=True)
    d = None
    try:
        d = start_daemon(tmp_path, "store_samples = false\n", state_dir=state)
        d.client("import gpuos_client as h\nwith h.phase('before_full'): pass\nh.flush()")
        d.wait_for(lambda: d.query("SELECT * FROM spans WHERE name='before_full'"), what="first span")
        # Fill the disk completely (the daemon's own files may have filled it already: then even
        # creating the filler fails, with the same ENOSPC).
        filler = state / "filler"
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        code = """
            import gpuos_client as h
            for i in range(300):
                with h.phase("during_full", i=i, pad="x" * 200):
                    pass
            h.flush()
        """
        d.client(code)
        st = d.wait_for(lambda: (s := d.status())["store"]["write_errors"] > 0 and s, what="write errors")
        assert st["store"]["backlog_batches"] > 0
        assert "full" in (st["store"]["last_error"] or "").lower()
        assert d.proc.poll() is None  # still running
        assert d.request("ping")["ok"]
        assert "store_write_failed" in d.log()
        # Space comes back: the held rows are written, none lost.
        filler.unlink()
        d.wait_for(
            lambda: len(d.query("SELECT * FROM spans WHERE name='during_full'")) == 300,
            timeout=20,
            what="backlog written after space returns",
        )
        st = d.status()
        assert st["store"]["shed_rows"] == 0
        assert st["store"]["backlog_batches"] == 0
        assert len(d.query("SELECT * FROM spans WHERE name='before_full'")) == 1
    finally:
        if d is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        for _ in range(20):
            if subprocess.run(["umount", str(state)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def test_backlog_bound_sheds_samples_before_spans(tmp_path):
    from gpuos_hintd.model import SampleRow, SpanRow
    from gpuos_hintd.store import Retention, Store

    store = Store(tmp_path / "s", Retention(max_backlog_rows=10))
    try:
        span = SpanRow("b", 1, 2, 1, 0, 1, "n", "n", 1, None, None, 0, 5, 0, "ok")
        samples = [SampleRow("b", 1, 2, 0, i, i, {"x": i}) for i in range(20)]
        batch = [("samples", samples), ("spans", [span])]
        store._keep(batch)
        kinds = [k for k, _ in store._backlog]
        assert kinds == ["spans"]
        assert store.shed_rows == 20
    finally:
        store.close()


def test_store_refuses_a_newer_schema(tmp_path):
    import sqlite3

    from gpuos_hintd.errors import StoreError
    from gpuos_hintd.store import DB_NAME, Store

    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path)
