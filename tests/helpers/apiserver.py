"""A real etcd + kube-apiserver (+ a controller manager) on 127.0.0.1 for tests.

The binaries are the ones ``./dev setup`` builds from the Go module proxy
(include/scripts/setup.d/kube-build.sh); nothing is downloaded here. Every
certificate is made with ``openssl`` in a temporary folder:

* a CA, the API server's serving certificate (SAN 127.0.0.1, localhost),
* the service-account signing key pair,
* an admin client certificate in the group ``system:masters`` (the kubeconfig
  ``kubeconfig`` next to them), and one for the controller manager
  (``system:kube-controller-manager``, no group).

The API server runs as kubeadm runs it: ``--authorization-mode=Node,RBAC``, the
default admission plugins plus NodeRestriction (ValidatingAdmissionPolicy is GA
and on), ``--allow-privileged``. The controller manager runs only four
controllers, each with its own ServiceAccount credentials like kubeadm's:
``serviceaccount`` (every namespace gets its ``default`` ServiceAccount, which
pod admission needs), ``serviceaccount-token`` (long-lived token Secrets get a
signed token and the CA), ``clusterrole-aggregation`` (the built-in
``view``/``edit``/``admin`` roles get their rules) and
``validatingadmissionpolicy-status`` (type checking of admission policies). No
scheduler, no kubelet: objects are stored, never run.

Each process runs in its own process group; :meth:`ApiServer.stop` ends the
groups (TERM, then KILL) and waits for them, also when the start failed half way.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datacloud.localstack import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "include" / "scripts" / "setup.d" / "kube-build.sh"
SETUP_HINT = "run ./dev setup"
SERVICE_CIDR = "10.96.0.0/12"


class BinariesMissing(RuntimeError):
    """The Kubernetes, etcd or helm binaries ./dev setup builds are not there."""


def _bin_dir(component: str) -> Path:
    try:
        res = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--dest", component], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BinariesMissing(f"cannot ask {BUILD_SCRIPT.name} where {component} is ({exc}); {SETUP_HINT}") from None
    path = Path(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else None
    if path is None:
        raise BinariesMissing(f"{BUILD_SCRIPT.name} --dest {component} failed: {res.stderr.strip()}; {SETUP_HINT}")
    if not (path.parent / ".done").exists():
        raise BinariesMissing(f"the {component} binaries are not built ({path.parent}/.done is missing); {SETUP_HINT}")
    return path


@dataclass(frozen=True)
class KubeBinaries:
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    etcd: Path
    helm: Path

    @classmethod
    def find(cls) -> KubeBinaries:
        """The built binaries, or :class:`BinariesMissing` saying to run ./dev setup."""
        kube, etcd, helm = _bin_dir("kubernetes"), _bin_dir("etcd"), _bin_dir("helm")
        found = cls(
            kube_apiserver=kube / "kube-apiserver",
            kube_controller_manager=kube / "kube-controller-manager",
            kubectl=kube / "kubectl",
            etcd=etcd / "etcd",
            helm=helm / "helm",
        )
        for path in vars(found).values():
            if not os.access(path, os.X_OK):
                raise BinariesMissing(f"{path} is missing or not executable; {SETUP_HINT}")
        return found


# --- certificates (openssl) ---


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {res.stderr.strip()}")


def _key(name: str, d: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=d)


def _signed(name: str, subject: str, extensions: str, d: Path) -> None:
    """name.key + name.crt signed by ca.key, with the given X.509v3 extensions."""
    _key(name, d)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-CAserial", "ca.srl", "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d,
    )  # fmt: skip


def make_certificates(d: Path) -> None:
    """CA, serving certificate, service-account keys and two client certificates in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    _key("ca", d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=datacloud-test-ca", "-days", "2", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.crt", cwd=d,
    )  # fmt: skip
    leaf = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    _signed(
        "apiserver",
        "/CN=kube-apiserver",
        leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
        d,
    )
    _signed("admin", "/O=system:masters/CN=datacloud-test-admin", leaf + "extendedKeyUsage=clientAuth\n", d)
    _signed("controller-manager", "/CN=system:kube-controller-manager", leaf + "extendedKeyUsage=clientAuth\n", d)
    _key("sa", d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def kubeconfig_text(url: str, certs: Path, user: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": str(certs / "ca.crt")}}],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate": str(certs / f"{user}.crt"), "client-key": str(certs / f"{user}.key")},
                }
            ],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        },
        sort_keys=False,
    )


# --- processes ---


class _Proc:
    """One child in its own process group, output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10) -> None:
        pgid = self.popen.pid  # start_new_session: the group id is the child's pid
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.popen.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # the group may outlive its leader (a helper it forked): make sure it is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


class ApiServer:
    """etcd + kube-apiserver + kube-controller-manager (two controllers) on loopback."""

    def __init__(self, bins: KubeBinaries, workdir: Path | None = None) -> None:
        self.bins = bins
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="datacloud-apiserver-")) if workdir is None else workdir
        self.certs = self.dir / "pki"
        self.kubeconfig = self.dir / "kubeconfig"
        self.port = 0
        self.url = ""
        self.procs: list[_Proc] = []
        self.startup_s: dict[str, float] = {}
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir / "home"),
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.dir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.dir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.dir / "helm" / "data"),
            "KUBECACHEDIR": str(self.dir / "kubecache"),
            "NO_PROXY": "127.0.0.1,localhost",
        }

    # -- lifecycle --

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 90) -> ApiServer:
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            make_certificates(self.certs)
            self.startup_s["certificates"] = time.monotonic() - t0
            self._start_etcd(timeout_s)
            self._start_apiserver(timeout_s)
            self._start_controller_manager()
            self.wait_for(self._view_is_aggregated, "the built-in ClusterRole view to get its aggregated rules", timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self._own_dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        proc = _Proc(name, argv, self.dir / f"{name}.log", self.env)
        self.procs.append(proc)
        return proc

    def wait_for(self, check: Any, what: str, timeout_s: float, interval_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for proc in self.procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.tail()}")
            if check():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)
                raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")
            time.sleep(interval_s)

    def _start_etcd(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(self.bins.etcd),
                "--name=test",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throw-away store: no fsync keeps the tests fast
                "--log-level=warn",
            ],
        )
        self.wait_for(lambda: _http_ok(f"127.0.0.1:{client}", "/health"), "etcd /health", timeout_s)
        self.startup_s["etcd"] = time.monotonic() - t0

    def _start_apiserver(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        c = self.certs
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig.write_text(kubeconfig_text(self.url, c, "admin"))
        (self.dir / "controller-manager.kubeconfig").write_text(kubeconfig_text(self.url, c, "controller-manager"))
        self._spawn(
            "kube-apiserver",
            [
                str(self.bins.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={c / 'apiserver.crt'}",
                f"--tls-private-key-file={c / 'apiserver.key'}",
                f"--client-ca-file={c / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={c / 'sa.pub'}",
                f"--service-account-signing-key-file={c / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",  # kubeadm's addition to the defaults
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.wait_for(lambda: self._get("/readyz")[0] == 200, "kube-apiserver /readyz", timeout_s, interval_s=0.3)
        self.startup_s["kube-apiserver"] = time.monotonic() - t0

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bins.kube_controller_manager),
                f"--kubeconfig={self.dir / 'controller-manager.kubeconfig'}",
                "--controllers=serviceaccount-controller,serviceaccount-token-controller,"
                "clusterrole-aggregation-controller,validatingadmissionpolicy-status-controller",
                # the token controller fills kubernetes.io/service-account-token Secrets in (the spark
                # stage's long-lived token for Airflow's Spark submission)
                f"--service-account-private-key-file={self.certs / 'sa.key'}",
                f"--root-ca-file={self.certs / 'ca.crt'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
        )

    # -- talking to it --

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        ctx.load_cert_chain(str(self.certs / "admin.crt"), str(self.certs / "admin.key"))
        return ctx

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ssl(), timeout=5)
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""

    def get_json(self, path: str) -> Any:
        status, body = self._get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:300]!r}")
        return json.loads(body)

    def _view_is_aggregated(self) -> bool:
        status, body = self._get("/apis/rbac.authorization.k8s.io/v1/clusterroles/view")
        return status == 200 and bool(json.loads(body).get("rules"))

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 120,
        as_: str | None = None,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this server (admin, impersonating ``as_``, or with another ``kubeconfig``)."""
        config = kubeconfig or self.kubeconfig
        argv = [str(self.bins.kubectl), f"--kubeconfig={config}", *(["--as", as_] if as_ else []), *args]
        return self._run(argv, stdin, check, timeout)

    def helm(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bins.helm), *args], stdin, check, timeout)

    def _run(self, argv: list[str], stdin: str | None, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"{Path(argv[0]).name} {' '.join(argv[1:4])} ... exited {res.returncode}:\n{res.stderr.strip()}")
        return res

    def wait_for_service_account(self, namespace: str, name: str = "default", timeout_s: float = 30) -> None:
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        self.wait_for(lambda: self._get(path)[0] == 200, f"ServiceAccount {namespace}/{name}", timeout_s)


def _http_ok(hostport: str, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(hostport, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
