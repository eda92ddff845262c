#!/usr/bin/python3
"""systemctl for a lab node: the lab's stand-in for systemd as init (lab infrastructure, not product).

Lab nodes are network namespaces with their own root filesystem and PID
namespace, but no systemd. Real machines run containerd and kubelet as systemd
services, and the product (node_prep, kubeadm, the Debian packages' maintainer
scripts) drives them through ``systemctl``. This script answers the part of
``systemctl`` they use, from the real unit files the packages ship:

* ``start|stop|restart|try-restart|reload-or-restart UNIT``: a supervisor
  process per unit runs ``ExecStartPre``/``ExecStart`` with ``Environment=`` and
  ``EnvironmentFile=`` of the unit and its drop-ins, and restarts it after
  ``RestartSec`` when it exits (``Restart=always|on-failure``), like systemd;
* ``enable|disable|is-enabled|is-active|status|daemon-reload|mask|unmask``;
* ``boot``: start every unit enabled for multi-user.target (node-init.sh calls it).

State lives in /run/lab-systemd (per node: /run is a tmpfs of the node).
Installed into the node as /usr/local/bin/systemctl by tests/lab/lab.py.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

UNIT_DIRS = ["/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"]
STATE = "/run/lab-systemd"
WANTS = "/etc/systemd/system/multi-user.target.wants"


def unit_name(name):
    return name if "." in name else name + ".service"


def unit_files(unit):
    main = next((os.path.join(d, unit) for d in UNIT_DIRS if os.path.isfile(os.path.join(d, unit))), None)
    if main is None:
        return []
    files = [main]
    dropins = {}
    for d in reversed(UNIT_DIRS):
        dd = os.path.join(d, unit + ".d")
        if os.path.isdir(dd):
            for f in os.listdir(dd):
                if f.endswith(".conf"):
                    dropins[f] = os.path.join(dd, f)
    return files + [dropins[k] for k in sorted(dropins)]


def parse(unit):
    """The [Service] settings of a unit and its drop-ins (an empty ExecStart= resets it)."""
    svc = {"Environment": [], "EnvironmentFile": [], "ExecStartPre": [], "ExecStart": [], "Restart": "no", "RestartSec": "1"}
    for path in unit_files(unit):
        section = None
        for raw in open(path).read().replace("\\\n", " ").splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or "=" not in line:
                continue
            key, value = (x.strip() for x in line.split("=", 1))
            if key in ("Environment", "EnvironmentFile", "ExecStartPre", "ExecStart"):
                if value == "":
                    svc[key] = []
                else:
                    svc[key].append(value)
            elif key in ("Restart", "RestartSec"):
                svc[key] = value
    return svc


def environment(svc):
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for item in svc["Environment"]:
        for word in shlex.split(item):
            if "=" in word:
                k, v = word.split("=", 1)
                env[k] = v
    for item in svc["EnvironmentFile"]:
        optional = item.startswith("-")
        path = item.lstrip("-")
        if not os.path.exists(path):
            if optional:
                continue
            raise SystemExit(f"EnvironmentFile {path} is missing")
        for line in open(path).read().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = " ".join(shlex.split(v)) if v.strip() else ""
    return env


def expand(cmd, env):
    """systemd's $VAR (split into words) and ${VAR} (one word) in an Exec line."""
    ignore = cmd.startswith("-")
    cmd = cmd.lstrip("-@+!:")
    words = []
    for word in shlex.split(cmd):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            words += env.get(m.group(1), "").split()
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda g: env.get(g.group(1), ""), word))
    return ignore, words


def pidfile(unit):
    return os.path.join(STATE, unit + ".pid")


def running(unit):
    try:
        pid = int(open(pidfile(unit)).read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def supervise(unit):
    """The supervisor: run the unit, restart it per Restart=, until stopped."""
    os.setsid()
    log = open(os.path.join(STATE, unit + ".log"), "ab", buffering=0)
    child = None

    def stop(*_):
        if child and child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        svc = parse(unit)
        try:
            env = environment(svc)
        except SystemExit as exc:
            log.write(f"{exc}\n".encode())
            time.sleep(float(svc["RestartSec"].rstrip("s") or 1))
            continue
        for pre in svc["ExecStartPre"]:
            ignore, argv = expand(pre, env)
            rc = subprocess.call(argv, env=env, stdout=log, stderr=log)
            if rc and not ignore:
                break
        if svc["ExecStart"]:
            _, argv = expand(svc["ExecStart"][-1], env)
            log.write(f"lab-systemd: starting {' '.join(argv)}\n".encode())
            child = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            rc = child.wait()
            log.write(f"lab-systemd: {unit} exited with {rc}\n".encode())
            if svc["Restart"] == "no" or (svc["Restart"] == "on-failure" and rc == 0):
                os.unlink(pidfile(unit))
                return
        time.sleep(float(svc["RestartSec"].rstrip("s") or 1))


def start(unit):
    if running(unit) or not unit_files(unit):
        return 0 if unit_files(unit) else 5
    os.makedirs(STATE, exist_ok=True)
    pid = os.fork()
    if pid == 0:
        os.closerange(0, 3)
        fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(fd, 0), os.dup2(fd, 1), os.dup2(fd, 2)
        try:
            supervise(unit)
        finally:
            os._exit(0)
    open(pidfile(unit), "w").write(str(pid))
    return 0


def stop(unit):
    pid = running(unit)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if not running(unit):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    try:
        os.unlink(pidfile(unit))
    except OSError:
        pass
    return 0


def enabled(unit):
    return os.path.lexists(os.path.join(WANTS, unit))


def main(argv):
    args = [a for a in argv if not a.startswith("-")]
    quiet = "-q" in argv or "--quiet" in argv
    if not args:
        return 0
    verb, units = args[0], [unit_name(u) for u in args[1:]]
    if verb == "boot":
        for u in sorted(os.listdir(WANTS)) if os.path.isdir(WANTS) else []:
            if u not in ("ssh.service", "sshd.service"):  # the node's PID 1 is its sshd already
                start(u)
        return 0
    if verb in ("daemon-reload", "reset-failed", "mask", "unmask", "preset"):
        return 0
    rc = 0
    for u in units:
        if verb == "start":
            rc |= start(u)
        elif verb == "stop":
            rc |= stop(u)
        elif verb in ("restart", "reload-or-restart", "force-reload", "reload"):
            stop(u)
            rc |= start(u)
        elif verb == "try-restart":
            if running(u):
                stop(u)
                rc |= start(u)
        elif verb == "enable":
            path = next((p for p in unit_files(u)[:1]), None)
            if path:
                os.makedirs(WANTS, exist_ok=True)
                link = os.path.join(WANTS, u)
                if not os.path.lexists(link):
                    os.symlink(path, link)
            if "--now" in argv:
                rc |= start(u)
        elif verb == "disable":
            link = os.path.join(WANTS, u)
            if os.path.lexists(link):
                os.unlink(link)
            if "--now" in argv:
                stop(u)
        elif verb == "is-enabled":
            ok = enabled(u)
            if not quiet:
                print("enabled" if ok else "disabled")
            rc |= 0 if ok else 1
        elif verb == "is-active":
            ok = bool(running(u))
            if not quiet:
                print("active" if ok else "inactive")
            rc |= 0 if ok else 3
        elif verb == "status":
            pid = running(u)
            print(f"{u}: {'active (running) pid ' + str(pid) if pid else 'inactive'}")
            rc |= 0 if pid else 3
        elif verb in ("show", "cat", "list-units", "list-unit-files"):
            pass
        else:
            print(f"lab systemctl: {verb} is not supported", file=sys.stderr)
            return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
