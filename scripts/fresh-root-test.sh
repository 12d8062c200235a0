#!/usr/bin/env bash
# Run ./test.sh in a fresh Debian 12 minbase root, the way a new user's machine
# would: a clean `git clone` of this checkout's HEAD, then the README's command.
#
#   sudo scripts/fresh-root-test.sh MODE [pytest args...]
#
# MODE is one of:
#   nspawn       systemd-nspawn -D ROOT /src/test.sh   (a container; test.sh, then pytest, is PID 1)
#   nspawn-boot  systemd-nspawn -b -D ROOT             (a booted systemd; test.sh runs from a unit)
#   chroot       chroot ROOT /src/test.sh              (host PID namespace, / not a mount point)
#   pid1         unshare --pid --fork + chroot ROOT /src/test.sh  (a bare PID-1 entry point, as in docker)
#
# The minbase root (debootstrap --variant=minbase bookworm) is made once and
# cached under $FRESH_CACHE (default /var/tmp/gpuos-fresh); every run starts
# from a `cp -a` copy of it, so reruns take the time of ./test.sh alone.  Debian
# .debs and pip's wheel cache are kept between runs (bind mounts) so that a
# rerun does not download them again; FRESH_NO_CACHE=1 turns that off.  What
# test.sh installs is still installed from nothing in every run.
#
# The result (exit code, duration, pytest's summary, the last lines of the log)
# goes to benchmarks/results/fresh-roots/MODE.json; the full log stays in the
# cache directory.  Exit status: test.sh's.
set -euo pipefail

mode=${1:-}
shift || true
case "$mode" in
  nspawn | nspawn-boot | chroot | pid1) ;;
  *)
    echo "usage: $0 nspawn|nspawn-boot|chroot|pid1 [pytest args...]" >&2
    exit 2
    ;;
esac
[[ $(id -u) -eq 0 ]] || { echo "$0: needs root (debootstrap, mounts, systemd-nspawn)" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FRESH_CACHE:-/var/tmp/gpuos-fresh}
suite=bookworm
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
timeout_s=${FRESH_TIMEOUT:-1800}
results=$repo/benchmarks/results/fresh-roots
mkdir -p "$cache" "$results" "$cache/apt-archives/partial" "$cache/pip-cache"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { say "installing $2"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need debootstrap debootstrap
[[ $mode == nspawn* ]] && need systemd-nspawn systemd-container

# ---- the cached base root ------------------------------------------------------------------
base=$cache/base
if [[ ! -f $base/.complete ]]; then
  tarball=$cache/$suite-minbase.tgz
  if [[ ! -f $tarball ]]; then
    say "downloading the $suite minbase packages once ($tarball)"
    rm -rf "$cache/tb"
    debootstrap --variant=minbase --make-tarball="$tarball" "$suite" "$cache/tb" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log"; exit 1; }
  fi
  say "debootstrap --variant=minbase $suite -> $base"
  rm -rf "$base"
  debootstrap --variant=minbase --unpack-tarball="$tarball" "$suite" "$base" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  rm -f "$base/var/cache/apt/archives/"*.deb
  touch "$base/.complete"
fi

# A booted container needs an init: systemd (not in minbase), made once on top of the base.
src_root=$base
if [[ $mode == nspawn-boot ]]; then
  src_root=$cache/base-boot
  if [[ ! -f $src_root/.complete ]]; then
    say "adding systemd to a copy of the base root ($src_root)"
    rm -rf "$src_root"
    cp -a "$base" "$src_root"
    rm -f "$src_root/.complete"
    cp /etc/resolv.conf "$src_root/etc/resolv.conf"
    unshare -m --propagation private sh -c '
      set -e; r=$1
      mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; mount --rbind /sys "$r/sys"
      chroot "$r" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus >/dev/null"
    ' sh "$src_root"
    rm -f "$src_root/var/cache/apt/archives/"*.deb
    : >"$src_root/etc/machine-id"
    touch "$src_root/.complete"
  fi
fi

# ---- this run's root: a copy of the base and a clean clone of HEAD -------------------------------
run_dir=$cache/runs/$mode
root=$run_dir/root
log=$run_dir/test.log
rm -rf "$run_dir"
mkdir -p "$run_dir"
say "copying the base root ($mode)"
cp -a "$src_root" "$root"
rm -f "$root/.complete"
commit=$(git -C "$repo" rev-parse HEAD)
git clone -q --no-hardlinks "$repo" "$root/src"
git -C "$root/src" checkout -q "$commit"
dirty=$(git -C "$repo" status --porcelain --untracked-files=no | wc -l)
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A host behind a TLS-intercepting proxy trusts the proxy's CA; the fresh root does not.  Hand pip
# (only pip) the host's bundle: FRESH_PIP_CERT, else $PIP_CERT, else none.
host_cert=${FRESH_PIP_CERT:-${PIP_CERT:-}}
if [[ -n $host_cert && -f $host_cert ]]; then
  cp "$host_cert" "$root/etc/pip-host-ca.crt"
  printf '[global]\ncert = /etc/pip-host-ca.crt\n' >"$root/etc/pip.conf"
fi
if [[ ${FRESH_NO_CACHE:-0} != 1 ]]; then
  mkdir -p "$root/root/.cache/pip"
  binds=("$cache/apt-archives:/var/cache/apt/archives" "$cache/pip-cache:/root/.cache/pip")
  # Debian's docker-clean-like default would delete the .debs after each install; keep them.
  echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$root/etc/apt/apt.conf.d/10keep-debs"
else
  binds=()
fi
args=("$@")
entry="/src/test.sh${args:+ $(printf '%q ' "${args[@]}")}"

# Mount the binds, /proc, /sys and /dev for the chroot modes, inside a private mount namespace.
chroot_mounts='
  set -e; r=$1; shift
  mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; mount --rbind /sys "$r/sys"
  for b in "$@"; do mkdir -p "$r/${b#*:}"; mount --bind "${b%%:*}" "$r/${b#*:}"; done
'

# The chroot modes inherit nothing of this shell's environment (a fresh machine has none of it;
# nspawn does the same by itself).
clean_env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb)

say "running ./test.sh in a fresh $suite minbase root ($mode; log: $log)"
start=$(date +%s)
set +e
case "$mode" in
  nspawn)
    nspawn_binds=()
    for b in "${binds[@]}"; do nspawn_binds+=("--bind=$b"); done
    timeout "$timeout_s" systemd-nspawn -q -D "$root" --register=no --keep-unit "${nspawn_binds[@]}" \
      --chdir=/src /bin/sh -c "exec $entry" >"$log" 2>&1
    rc=$?
    ;;
  nspawn-boot)
    nspawn_binds=()
    for b in "${binds[@]}"; do nspawn_binds+=("--bind=$b"); done
    cat >"$root/etc/systemd/system/fresh-test.service" <<EOF
[Unit]
Description=./test.sh of a fresh clone
After=multi-user.target
[Service]
Type=oneshot
WorkingDirectory=/src
Environment=HOME=/root
ExecStart=/bin/sh -c '$entry >/var/log/fresh-test.log 2>&1; echo \$? >/var/log/fresh-test.rc'
ExecStartPost=/bin/systemctl --no-block poweroff
TimeoutStartSec=infinity
# test_systemd boots a container from here: like systemd-nspawn@.service, hand it a cgroup subtree.
Delegate=yes
[Install]
WantedBy=multi-user.target
EOF
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -sf ../fresh-test.service "$root/etc/systemd/system/multi-user.target.wants/fresh-test.service"
    timeout "$timeout_s" systemd-nspawn -q -D "$root" --register=no --keep-unit -b --console=pipe \
      "${nspawn_binds[@]}" systemd.firstboot=off >"$run_dir/console.log" 2>&1
    boot_rc=$?
    if [[ -f $root/var/log/fresh-test.rc ]]; then
      rc=$(cat "$root/var/log/fresh-test.rc")
      cp "$root/var/log/fresh-test.log" "$log"
    else
      rc=$((boot_rc ? boot_rc : 1))
      { echo "no result from the booted container (systemd-nspawn exit $boot_rc); console:"; tail -40 "$run_dir/console.log"; } >"$log"
    fi
    ;;
  chroot)
    timeout "$timeout_s" "${clean_env[@]}" unshare -m --propagation private sh -c "$chroot_mounts"'
      exec chroot "$r" /bin/sh -c "cd /src && exec '"$entry"'"' sh "$root" "${binds[@]}" >"$log" 2>&1
    rc=$?
    ;;
  pid1)
    # Only the entry point differs from chroot: test.sh (then pytest) is PID 1 of a new PID namespace.
    timeout "$timeout_s" "${clean_env[@]}" unshare -m --propagation private sh -c "$chroot_mounts"'
      umount -l "$r/proc"
      exec unshare --pid --fork --mount-proc="$r/proc" chroot "$r" '"$entry" sh "$root" "${binds[@]}" >"$log" 2>&1
    rc=$?
    ;;
esac
set -e
duration=$(($(date +%s) - start))
say "$mode: exit $rc after ${duration}s"
tail -5 "$log" >&2

# ---- the record ----------------------------------------------------------------------------------
python3 - "$results/$mode.json" "$log" "$mode" "$rc" "$duration" "$commit" "$dirty" <<'EOF'
import json, re, sys, datetime
out, log, mode, rc, duration, commit, dirty = sys.argv[1:]
text = open(log, errors="replace").read()
clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
lines = clean.splitlines()
summary = next((l.strip("= ") for l in reversed(lines) if re.search(r"\b(passed|failed|error|no tests ran)\b", l)), "")
short = []
if "short test summary info" in clean:
    short = [l for l in clean.split("short test summary info", 1)[1].splitlines()[1:] if l.startswith(("SKIPPED", "FAILED", "ERROR", "XFAIL"))]
record = {
    "what": "./test.sh of a clean git clone in a fresh Debian 12 (bookworm) debootstrap --variant=minbase root",
    "command": f"sudo scripts/fresh-root-test.sh {mode}",
    "mode": mode,
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": commit,
    "uncommitted_changes_not_tested": int(dirty),
    "exit_code": int(rc),
    "duration_s": int(duration),
    "pytest_summary": summary,
    "skipped_failed": short,
    "log_tail": lines[-60:],
}
with open(out, "w") as f:
    json.dump(record, f, indent=1)
    f.write("\n")
print(f"recorded {out}: exit {rc}, {summary}", file=sys.stderr)
EOF
exit "$rc"
