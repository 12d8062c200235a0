"""gpuos-hintd as a real systemd service, in a real booted systemd.

What runs: a full boot of this machine's own Debian with `systemd-nspawn -b`.
PID 1 of the test host is not systemd, so the test boots one in a container:

- root file system: an overlayfs with the host's / as the read-only lower
  layer and a tmpfs as the upper layer, mounted inside a private mount
  namespace (`unshare -m`).  (`systemd-nspawn -D / --volatile=overlay` refuses
  the host root: "Spawning container on root directory is not supported";
  --volatile=state would leave /etc read-only, and install-unit writes there.)
  Everything the container writes (the unit in /etc, the user, the store, the
  journal) lands in that tmpfs and is gone when the namespace goes.
- a fresh /etc/machine-id in the upper layer, `--register=no --keep-unit`
  (no machined on the host), kernel command line `systemd.firstboot=off`,
  `--bind-ro` of the repository and the Python installation at the same paths
  so the venv's gpuos-hintd runs as installed.
- commands enter the container with `nsenter -t <container PID 1> -a` (no
  machinectl without registration), with a clean environment.

Then, inside: `gpuos-hintd install-unit` (real systemd-sysusers, tmpfiles,
daemon-reload), `systemd-analyze verify`, `systemctl start`, READY and
STATUS= seen by systemd, a real client (root) sending hints to the daemon
(user gpuos-hintd with CAP_SYS_PTRACE/CAP_DAC_READ_SEARCH) and the span
carrying /proc/PID/io figures only those capabilities allow, structured
journald entries (GPUOS_EVENT, GPUOS_PID, PRIORITY), SIGHUP reload through
`systemctl reload`, a watchdog restart of a SIGSTOPped main loop, and a clean
`systemctl stop`.  A second test runs the no-binding paths (raw sd_notify
datagram, journald native protocol incl. the memfd path for a large entry)
in transient units.

The service is installed as the README says, `install-unit --venv
/opt/gpuos-hint --enable` (a venv made from this checkout with the system's
Python; pip needs its package index), so the service user never needs to reach
the checkout or the test's own Python.

Needs root, systemd-nspawn (Debian: systemd-container), overlayfs.  The
container is killed (SIGKILL to its PID 1) on every path.  About 40 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpuos_hintd import install

pytestmark = [pytest.mark.systemd, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)  # the venv's python; its gpuos-hintd is beside it
HINTD = PYTHON.parent / "gpuos-hintd"
# PrivateTmp= hides the host's /tmp from the service: a checkout (and its .venv) under /tmp - as CI
# may place it - would make ExecStart vanish.  Only then does the test drop-in turn PrivateTmp off.
_UNDER_TMP = any(str(p).startswith(("/tmp/", "/var/tmp/")) for p in (REPO, PYTHON))
TMP_DROPIN = "PrivateTmp=no\\n" if _UNDER_TMP else ""
HINTCTL = PYTHON.parent / "gpuos-hintctl"
UNIT = "gpuos-hintd.service"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BOOT_SCRIPT = r"""
set -e
d=$1; shift
mount -t tmpfs -o mode=0755 gpuos-test "$d"
mkdir "$d/upper" "$d/work" "$d/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$d/upper,workdir=$d/work" "$d/root"
echo "$MACHINE_ID" > "$d/root/etc/machine-id"
exec systemd-nspawn -D "$d/root" --register=no --keep-unit --boot --console=pipe "$@"
"""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mounts, systemd-nspawn)"
    for tool in ("systemd-nspawn", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install systemd-container util-linux)"
    if not any(Path(p).exists() for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")):
        return "systemd not installed"
    if not HINTD.exists():
        return f"{HINTD} not found (install the project into the running Python)"
    return _nested_boot_why_not()


def _nested_boot_why_not() -> str | None:
    """Why this process cannot boot a container at all (then nothing of ours would be tested).

    Each probe asks the system the question nspawn will ask, rather than guessing from
    the environment: a chroot and a PID-1 container entry point make / no mount point
    (no private propagation), and a cgroup outside this namespace leaves nspawn no
    place for its payload cgroup.
    """
    try:
        if os.stat("/") != os.stat("/proc/1/root"):
            return "running in a chroot (/ is not PID 1's root): systemd-nspawn cannot boot from here"
    except OSError:
        pass  # /proc/1/root of another user: not ours to compare
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"no private mount namespace here ({probe.stderr.strip() or f'exit {probe.returncode}'})"
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        groups = []
    outside = [g for g in groups if "/.." in g.split(":", 2)[-1]]
    if outside:
        return (
            f"this process's cgroup is outside its cgroup namespace ({outside[0]}): nspawn has no place for a payload"
        )
    return None


class BootImpossible(Exception):
    """systemd-nspawn could not boot a container here (before any of the project's code ran)."""


class Container:
    """A booted systemd in an nspawn container over an overlay of the host root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gpuos-nspawn.", dir="/tmp"))
        self.log_path = Path(f"{self.dir}.log")
        self.name = f"gpuos-test-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # ------------------------------------------------------------ lifecycle
    def boot(self, timeout: float = 30.0) -> None:
        binds = {str(REPO), sys.prefix, sys.base_prefix}
        args = [f"--bind-ro={p}" for p in sorted(binds) if p != "/"]
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", BOOT_SCRIPT, "sh", str(self.dir)]
        cmd += [f"--machine={self.name}", *args, "systemd.firstboot=off"]
        env = {"PATH": PATH, "MACHINE_ID": uuid.uuid4().hex}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise BootImpossible(f"systemd-nspawn exited {self.proc.returncode}: {self.console_reason()}")
            if time.monotonic() > deadline:
                raise BootImpossible(f"no container init after {timeout} s: {self.console_reason()}")
            self.leader = self._find_leader()
            time.sleep(0.05)
        # Right after the fork, PID 1 may not have its bus socket yet: retry until it answers.
        while True:
            try:
                r = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
            except subprocess.TimeoutExpired:
                # Seen inside a booted container started from a unit without Delegate=: the nested
                # systemd gets no cgroup subtree of its own and never finishes booting.
                raise BootImpossible(
                    f"the container's systemd did not finish booting: {self.console_reason()}"
                ) from None
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline or state not in ("", "offline", "initializing", "starting"):
                raise BootImpossible(f"the container's systemd reached {state!r}: {self.console_reason()}")
            time.sleep(0.1)

    def _find_leader(self) -> int:
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for pid in children:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        except OSError:
            pass
        return 0

    def close(self) -> None:
        """SIGKILL to the container's PID 1 ends its PID namespace; nspawn then exits and
        the mount namespace (overlay, tmpfs) goes with it."""
        if self.leader:
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        try:
            self.dir.rmdir()
        except OSError:
            pass
        self.log_path.unlink(missing_ok=True)

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def console_reason(self) -> str:
        """The console's last few lines, on one line: nspawn's own error is the last thing it prints."""
        lines = [ln.strip() for ln in self.console().splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "(no console output)"

    # ------------------------------------------------------------ commands
    def sh(self, script: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"]
        proc = subprocess.run([*cmd, "sh", "-c", script], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{script!r} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *match: str, since_us: int = 0) -> list[dict[str, object]]:
        """Entries of a unit (journalctl -o json), optionally only those after a realtime stamp."""
        out = self.sh(f"journalctl -u {unit} -o json --all --no-pager {' '.join(match)}").stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if int(str(e["__REALTIME_TIMESTAMP"])) > since_us]

    def now_us(self) -> int:
        return int(self.sh("date +%s%6N").stdout)

    def wait_for(self, what: str, pred, timeout: float = 15.0, step: float = 0.1):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(step)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    why = _why_not()
    if why is not None:
        print(f"test_systemd skipped: {why}")
        pytest.skip(why)
    c = Container()
    try:
        t0 = time.monotonic()
        try:
            c.boot()
        except BootImpossible as exc:
            print(f"test_systemd skipped: {exc}")
            pytest.skip(f"cannot boot a container here: {exc}")
        print(f"container booted in {time.monotonic() - t0:.1f} s (PID 1 = host pid {c.leader})")
        yield c
    finally:
        c.close()


CLIENT = textwrap.dedent(
    """
    import os, sys, time
    import gpuos_client
    print(os.getpid(), flush=True)
    with gpuos_client.phase("prefill"):
        sum(range(2_000_000))
        for _ in range(50):
            with open("/etc/os-release", "rb") as f:
                f.read()
    with gpuos_client.phase("decode"):
        time.sleep(float(sys.argv[1]))
    """
)


def test_service_lifecycle(container: Container) -> None:
    c = container
    t0 = time.monotonic()
    # ---- install, word for word as the README says: a venv in /opt, enabled and started ----
    # The checkout's own .venv will not do where it sits under a private directory (a /root of
    # mode 0700 here, often): install-unit refuses and names the command that works.
    why = install.unusable_reason(HINTD)
    plain = c.sh(f"{HINTD} install-unit", check=False)
    if why is not None:
        assert plain.returncode == 1 and plain.stdout == "", plain.stdout
        assert why in plain.stderr and f"sudo {HINTD} install-unit --venv /opt/gpuos-hint" in plain.stderr
        assert c.sh("test -e /etc/systemd/system/gpuos-hintd.service", check=False).returncode != 0
    else:
        assert plain.returncode == 0, plain.stderr
    t_venv = time.monotonic()
    r = c.sh(f"cd {REPO} && {HINTD} install-unit --venv /opt/gpuos-hint --enable", check=False, timeout=300)
    out = r.stdout
    print(out, r.stderr, f"(install-unit --venv took {time.monotonic() - t_venv:.1f} s)")
    assert r.returncode == 0, r.stderr
    exec_path = "/opt/gpuos-hint/bin/gpuos-hintd"
    assert f"ExecStart={exec_path}" in out
    assert "run: systemd-sysusers" in out and "run: systemctl daemon-reload" in out
    assert "run: systemctl enable --now gpuos-hintd.service" in out
    assert c.sh("systemctl is-enabled gpuos-hintd").stdout.strip() == "enabled"
    assert c.sh("systemctl is-active gpuos-hintd").stdout.strip() == "active"
    assert c.sh("id -u gpuos-hintd").stdout.strip().isdigit()
    verify = c.sh(f"systemd-analyze verify /etc/systemd/system/{UNIT}", check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    again = c.sh(f"{exec_path} install-unit").stdout  # idempotent, and the venv's own gpuos-hintd may run it
    assert "unchanged: /etc/systemd/system/gpuos-hintd.service" in again
    readme = c.sh("systemctl status gpuos-hintd --no-pager", check=False).stdout
    print(readme)
    assert "/etc/systemd/system/gpuos-hintd.service; enabled;" in readme and "active (running)" in readme

    # A short watchdog for the test, the way an admin would: a drop-in.
    c.sh(
        "mkdir -p /etc/systemd/system/gpuos-hintd.service.d && "
        'printf \'[Service]\\nWatchdogSec=3s\\nExecStopPost=/bin/sh -c "echo main-exit $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS"\\n'
        f"{TMP_DROPIN}' "
        "> /etc/systemd/system/gpuos-hintd.service.d/50-test.conf && "
        "systemctl daemon-reload"
    )

    # ---- (re)start with the drop-in: Type=notify returns once READY=1 arrived -----------
    c.sh("systemctl restart gpuos-hintd")
    st = c.show(UNIT, "ActiveState", "SubState", "StatusText", "NotifyAccess", "MainPID", "Type", "WatchdogUSec")
    print(st)
    assert (st["ActiveState"], st["SubState"], st["Type"], st["NotifyAccess"]) == (
        "active",
        "running",
        "notify",
        "main",
    )
    assert "clients" in st["StatusText"] and st["WatchdogUSec"] == "3s"
    main_pid = int(st["MainPID"])
    creds = c.sh(f"grep -E '^(Uid|CapEff|CapBnd)' /proc/{main_pid}/status").stdout.split()
    # uid gpuos-hintd; CapEff = CapBnd = CAP_DAC_READ_SEARCH (2) | CAP_SYS_PTRACE (19)
    assert creds[creds.index("Uid:") + 1] != "0"
    assert creds[creds.index("CapEff:") + 1] == "0000000000080004"
    assert creds[creds.index("CapBnd:") + 1] == "0000000000080004"
    assert c.sh("stat -c '%a %U' /run/gpuos-hintd/hint.sock").stdout.split() == ["666", "gpuos-hintd"]

    # ---- a real client (as root) while the service runs ------------------------------
    client = subprocess.Popen(
        ["nsenter", "-t", str(c.leader), "-a", "env", "-i", f"PATH={PATH}", str(PYTHON), "-c", CLIENT, "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        cpid = int(client.stdout.readline())

        def open_decode() -> dict[str, object] | None:
            status = json.loads(c.sh(f"{HINTCTL} status --json").stdout)
            for cl in status["clients"]:
                if cl["pid"] == cpid and [p.get("path") for p in cl["open_phases"]] == ["decode"]:
                    return status
            return None

        status = c.wait_for("the client's open 'decode' phase in status", open_decode, timeout=10)
        assert client.wait(timeout=15) == 0
    finally:
        if client.poll() is None:
            client.kill()
    assert status["counters"]["events"] >= 4
    assert status["daemon"]["endpoint"] == "ipc:///run/gpuos-hintd/hint.sock"

    def spans() -> list[dict[str, object]] | None:
        c.sh(f"{HINTCTL} status --json")
        rows = json.loads(c.sh(f"{HINTCTL} spans --pid {cpid} --json").stdout)
        return rows if len(rows) == 2 else None

    rows = {s["name"]: s for s in c.wait_for("2 spans of the client in the store", spans)}
    assert set(rows) == {"prefill", "decode"} and all(s["status"] == "ok" for s in rows.values())
    # root's /proc/PID/io and task/*/syscall, read by the unprivileged service user: the capabilities work.
    assert rows["decode"]["signals"]["io_syscr"] is not None
    assert rows["decode"]["signals"]["thread_in_sync_wait_mean"] is not None
    final = json.loads(c.sh(f"{HINTCTL} status --json").stdout)
    proc = next(s for s in final["samplers"] if s["name"] == "proc")
    assert proc["health"]["denied"] == 0, proc

    # ---- journald: structured entries from the daemon ---------------------------------
    entries = c.journal(UNIT, "GPUOS_EVENT=client_connected", f"GPUOS_PID={cpid}")
    assert entries, c.sh(f"journalctl -u {UNIT} --no-pager").stdout
    e = entries[0]
    print({k: v for k, v in e.items() if k.startswith(("GPUOS_", "PRIORITY", "SYSLOG_ID", "CODE_", "MESSAGE"))})
    assert e["PRIORITY"] == "6" and e["SYSLOG_IDENTIFIER"] == "gpuos-hintd" and e["GPUOS_UID"] == "0"
    assert e["_SYSTEMD_UNIT"] == UNIT and str(e["MESSAGE"]).startswith("client_connected ")
    assert str(e["CODE_FILE"]).endswith(".py") and "logs.py" not in str(e["CODE_FILE"])
    listening = c.journal(UNIT, "GPUOS_EVENT=listening")[-1]
    assert listening["GPUOS_WATCHDOG_S"] == "3.0" and listening["GPUOS_NOTIFY"] in ("systemd-python", "socket")

    # ---- reload: SIGHUP via systemctl reload; config change applied, same process -----
    since = c.now_us()
    c.sh("echo 'sample_hz = 20' > /etc/gpuos-hintd/config.toml && systemctl reload gpuos-hintd")
    c.wait_for("the daemon's 'reloaded' entry", lambda: c.journal(UNIT, "GPUOS_EVENT=reloaded", since_us=since))
    st = c.show(UNIT, "ActiveState", "SubState", "MainPID")
    assert (st["ActiveState"], st["SubState"], int(st["MainPID"])) == ("active", "running", main_pid)
    assert json.loads(c.sh(f"{HINTCTL} status --json").stdout)["daemon"]["sample_hz"] == 20.0
    msgs = [str(m["MESSAGE"]) for m in c.journal(UNIT, "_PID=1", since_us=since)]
    assert any(m.startswith("Reloading ") for m in msgs) and any(m.startswith("Reloaded ") for m in msgs), msgs

    # ---- a failed reload: the old config stays, and systemctl status says so ----------
    c.sh(
        "echo 'sample_hz = 30' > /etc/gpuos-hintd/config.toml && echo 'enable_samplers = [\"bogus\"]' >> /etc/gpuos-hintd/config.toml"
    )
    c.sh("systemctl reload gpuos-hintd")
    failed = c.wait_for(
        "STATUS= of the failed reload",
        lambda: (t := c.show(UNIT, "StatusText")["StatusText"]).startswith("reload failed") and t,
    )
    assert "/etc/gpuos-hintd/config.toml: enable_samplers=['bogus']: no such sampler" in failed, failed
    assert json.loads(c.sh(f"{HINTCTL} status --json").stdout)["daemon"]["sample_hz"] == 20.0
    print(c.sh("systemctl status gpuos-hintd --no-pager -n 0", check=False).stdout)
    c.sh("echo 'sample_hz = 20' > /etc/gpuos-hintd/config.toml && systemctl reload gpuos-hintd")
    c.wait_for("STATUS= after a good reload", lambda: not c.show(UNIT, "StatusText")["StatusText"].startswith("reload"))

    # ---- watchdog: a stalled main loop is killed and restarted ------------------------
    c.sh(f"kill -STOP {main_pid}")
    t_stop = time.monotonic()

    def restarted() -> dict[str, str] | None:
        s = c.show(UNIT, "NRestarts", "MainPID", "ActiveState", "SubState")
        ok = s["NRestarts"] == "1" and s["MainPID"] not in ("0", str(main_pid)) and s["SubState"] == "running"
        return s if ok else None

    st = c.wait_for("a watchdog restart", restarted, timeout=20, step=0.2)
    print(f"watchdog restart after {time.monotonic() - t_stop:.1f} s: {st}")
    msgs = [str(m["MESSAGE"]) for m in c.journal(UNIT, "_PID=1", since_us=since)]
    assert any("Watchdog timeout" in m for m in msgs), msgs
    assert any("Failed with result 'watchdog'" in m for m in msgs), msgs
    new_pid = int(st["MainPID"])

    # ---- stop: SIGTERM, STOPPING=1, clean exit 0, sockets gone ------------------------
    c.sh("systemctl stop gpuos-hintd")
    st = c.show(UNIT, "ActiveState", "Result")
    assert st == {"ActiveState": "inactive", "Result": "success"}, st
    # ExecStopPost= of the test drop-in echoes $SERVICE_RESULT $EXIT_CODE $EXIT_STATUS.
    exits = [str(m["MESSAGE"]) for m in c.journal(UNIT, since_us=since) if "main-exit" in str(m["MESSAGE"])]
    assert exits == ["main-exit watchdog killed ABRT", "main-exit success exited 0"], exits
    assert c.sh("test -e /run/gpuos-hintd/hint.sock", check=False).returncode != 0
    stopped = c.journal(UNIT, "GPUOS_EVENT=stopped", f"_PID={new_pid}")
    assert stopped, "no 'stopped' entry from the restarted daemon"
    print(f"lifecycle checks took {time.monotonic() - t0:.1f} s")


RAW = textwrap.dedent(
    """
    import time, structlog
    from gpuos_hintd import logs, notify
    fmt = logs.setup("info", "auto", binding=False)
    n = notify.Notifier(binding=False)
    assert (fmt, logs.state["journal"], n.backend) == ("journald", "native", "socket"), (fmt, logs.state, n.backend)
    log = structlog.get_logger()
    log.warning("raw_check", multi="line one\\nline two", n=3, nothing=None)
    log.info("raw_big", big="x" * 300_000)
    assert n.ready("raw ready")
    assert n.status("raw status")
    time.sleep(1.0)
    assert n.stopping()
    """
)


def test_without_systemd_python(container: Container) -> None:
    """The fallbacks (no systemd-python): sd_notify datagrams and journald's native protocol."""
    c = container
    unit = "gpuos-raw.service"
    props = "-p Type=notify -p NotifyAccess=main -p TimeoutStartSec=10"
    props += " -p 'ExecStopPost=/bin/sh -c \"echo raw-exit $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS\"'"
    # Type=notify: systemd-run returns once READY=1 arrived (a process that exits first fails the unit).
    run = c.sh(f"systemd-run --quiet --unit={unit} {props} {PYTHON} -c '{RAW}'", check=False)
    assert run.returncode == 0, run.stdout + run.stderr + c.sh(f"journalctl -u {unit} --no-pager").stdout
    c.wait_for("STATUS=raw status", lambda: c.show(unit, "StatusText")["StatusText"] == "raw status", timeout=5)
    exits = c.wait_for(
        "the raw unit's exit",
        lambda: [str(m["MESSAGE"]) for m in c.journal(unit) if "raw-exit" in str(m["MESSAGE"])],
    )
    assert exits == ["raw-exit success exited 0"], c.sh(f"journalctl -u {unit} --no-pager").stdout
    e = c.journal(unit, "GPUOS_EVENT=raw_check")[0]
    assert e["PRIORITY"] == "4" and e["GPUOS_MULTI"] == "line one\nline two" and e["GPUOS_N"] == "3"
    assert "GPUOS_NOTHING" not in e and str(e["CODE_FUNC"]) == "<module>"
    big = c.journal(unit, "GPUOS_EVENT=raw_big")[0]  # over one datagram: sent as a sealed memfd
    assert len(str(big["GPUOS_BIG"])) == 300_000
