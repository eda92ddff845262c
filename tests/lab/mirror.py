"""The SSH lab's private mirror: container images, an OCI registry, and .debs of the real binaries.

Lab nodes have no internet, like a private network: they get Kubernetes the
way such a network does, .debs from a local apt repository and images from a
registry mirror. Everything here is made from what ``./dev setup`` built or
downloaded (no Docker, no registry on the internet):

* the Kubernetes, etcd, CoreDNS, flannel, CNI and Helm binaries that
  ``include/scripts/setup.d/kube-build.sh`` builds from the Go module proxy
  (``<cache>/kube/<component>-<version>/bin``, complete when ``.done`` exists);
* Debian bookworm's ``nftables``/``iptables``/``conntrack`` (+ libraries) from the
  lab's package pool and root filesystem (``include/scripts/setup.d/lab-rootfs.sh``),
  and ``busybox-static`` (a host package, see ``include/scripts/dev-setup.sh``);
* ``pause`` compiled with ``gcc -Os -static`` from Kubernetes' ``build/pause/linux/pause.c``.

Versions come from ``manifests/versions.yaml``.

API
---

``build_images() -> ImageSet``
    The images, as an OCI image layout (``oci-layout``, ``index.json``,
    ``blobs/sha256/``) under ``<cache>/lab/images-<hash of inputs>``; built once,
    rebuilt only when an input changes (binaries, Debian packages, versions,
    this file). Layers are reproducible (mtime 0, uid/gid 0, sorted), so the
    same inputs give the same digests. Images (upstream names, which the lab
    mirrors): ``registry.k8s.io/{kube-apiserver,kube-controller-manager,
    kube-scheduler,kube-proxy}:v<kubernetes.version>``, ``registry.k8s.io/etcd:<etcd_version>-0``,
    ``registry.k8s.io/coredns/coredns:<coredns_version>``, ``registry.k8s.io/pause:<pause_version>``,
    ``network.flannel_image`` (the image the network stage names). ``image_refs()`` lists them.

``Registry(address, port, storage_dir=default_storage(), run_dir=None)``
    Debian's ``docker-registry`` (distribution 2.8) on plain HTTP.
    ``start() -> Registry`` writes its config (into ``run_dir``, a fresh temporary
    folder by default) and waits for ``/v2/``; ``stop()`` kills its process group
    (nothing is left behind); ``with Registry(...) as r:``. ``state()`` /
    ``Registry.from_state(d)`` for a lab that saves its processes and stops them
    from another process. ``url`` is ``http://ADDR:PORT``.
    ``push(images) -> PushResult`` pushes every image through the registry HTTP API
    (blob HEAD, skip when present; cross-repository mount when the blob is in
    another repository; else POST + monolithic PUT ``?digest=``; manifest PUT
    unless the tag already names that digest). Idempotent: a second push uploads
    nothing. Repositories keep the upstream registry host as the first path
    component (``registry.k8s.io/kube-apiserver``, ``ghcr.io/flannel-io/flannel``),
    so one registry mirrors several upstream registries.

``hosts_toml(upstream, mirror_url) -> str``, ``write_hosts_dir(dir, mirror_url, upstreams) -> list[Path]``
    containerd's ``certs.d/<upstream>/hosts.toml`` sending pulls of UPSTREAM to
    ``<mirror_url>/v2/<upstream>`` with ``override_path = true``;
    ``CONTAINERD_CRI_REGISTRY`` is the CRI plugin setting that reads them.

``build_packages(out_dir) -> list[Path]``
    .debs of the real binaries, versioned like pkgs.k8s.io, into OUT_DIR (hard
    links to a cache ``<cache>/lab/debs-<hash of inputs>``): ``kubelet``,
    ``kubeadm``, ``kubectl`` at ``<kubernetes.version>-<package_revision>``,
    ``kubernetes-cni`` at ``<cni_plugins_version without v>-<package_revision>``
    (``/opt/cni/bin``), ``helm`` at ``<helm>-<helm_package_revision>`` (``/usr/bin/helm``).
    ``deb(...)`` is the .deb writer they share.

``chart_repository() -> Path``
    The folder the lab serves as a Helm chart repository (``../shared/charts``
    beside the clone; holds ``index.yaml``).

``python tests/lab/mirror.py images|packages DIR|serve ADDR PORT`` does the same by hand.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT))  # tests.lab, when this file runs as a command

from datacloud import config  # noqa: E402
from datacloud.localstack import ferretdb_binary, process_start_time, spark_jars  # noqa: E402
from datacloud.render import versions  # noqa: E402  (manifests/versions.yaml, the one reader)

KUBE_BUILD = ROOT / "include" / "scripts" / "setup.d" / "kube-build.sh"

ARCH = "amd64"  # Debian and OCI name of the only architecture the lab builds for
MULTIARCH = "x86_64-linux-gnu"
LOADER = "lib64/ld-linux-x86-64.so.2"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GZIP_LEVEL = 6
MAINTAINER = "datacloud lab <lab@localhost>"
CONTAINERD_CRI_REGISTRY = '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
# busybox applets of the flannel image (its sidecar script writes the CNI config)
BUSYBOX_APPLETS = ("cp", "cat", "sleep", "mkdir", "mv", "sh", "test")
# Debian packages of the netfilter layer (kube-proxy, flannel), with their dependencies from the pool
NETFILTER_PACKAGES = ("nftables", "iptables", "conntrack")
# Debian's iptables alternatives point at the nft variant by default
# The lab's own test image (pods that serve and probe over the CNI): every applet of busybox-static.
# Its registry host is a reserved name (.invalid never resolves), so it can only come from the lab mirror.
PROBE_REGISTRY = "lab.datacloud.invalid"
PROBE_REF = f"{PROBE_REGISTRY}/probe:busybox"
# The lab inventory's images.registry: where the platform's own images (the Spark image) come from.
OWN_REGISTRY = PROBE_REGISTRY
SPARK_OS_STEP = ROOT / "include" / "scripts" / "setup.d" / "spark-os.sh"
SPARK_ENTRYPOINT = Path(__file__).resolve().parent / "spark-entrypoint.sh"
# The stand-in of the Kubeflow Spark operator's image (its Go module is not served): the Spark image + this double.
OPERATOR_DOUBLE = Path(__file__).resolve().parent / "spark_operator_double.py"
DOUBLE_API = Path(__file__).resolve().parent / "double_api.py"  # what the controller doubles share
PSMDB_DOUBLE = Path(__file__).resolve().parent / "psmdb_operator_double.py"
MONGO_DOUBLE = Path(__file__).resolve().parent / "mongo_double.py"
MONGO_PYTHON_DISTS = ("pymongo",)  # the mongo double speaks BSON with pymongo's bson
# The Spark image's Python side: these distributions and what they require, copied from this
# interpreter's environment (requirements.txt / constraints.txt pin them), for Debian's python3.11.
SPARK_PYTHON_DISTS = ("pyspark", "numpy", "pandas", "pyarrow")
SPARK_SITE = "usr/local/lib/python3.11/dist-packages"  # on Debian python3.11's sys.path
SPARK_UID = 185  # the official Spark image's user
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
IPTABLES_LINKS = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore")


# --- inputs -------------------------------------------------------------------


def _vtag(v: str) -> str:
    return v if v.startswith("v") else "v" + v


def image_refs() -> dict[str, str]:
    """Component -> the upstream image reference the lab mirrors, at the pinned versions."""
    v = versions()
    k, n = v["kubernetes"], v["network"]
    kube = _vtag(str(k["version"]))
    refs = {
        c: f"registry.k8s.io/{c}:{kube}" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
    }
    refs["etcd"] = f"registry.k8s.io/etcd:{str(k['etcd_version']).lstrip('v')}-0"  # kubeadm's tag: <etcd>-<image revision>
    refs["coredns"] = f"registry.k8s.io/coredns/coredns:{_vtag(str(k['coredns_version']))}"
    refs["pause"] = f"registry.k8s.io/pause:{str(k['pause_version']).lstrip('v')}"
    refs["flannel"] = str(n["flannel_image"])  # the image the network stage's DaemonSet names
    st = v["storage"]
    refs["local-path-provisioner"] = docker_io(str(st["local_path_image"]))  # the storage stage without Ceph disks
    refs["busybox"] = docker_io(str(st["local_path_helper_image"]))  # its helper pods and the storage probe
    refs["probe"] = PROBE_REF
    refs["spark"] = f"{OWN_REGISTRY}/{v['spark']['image']}"  # images.own_image with the lab's images.registry
    # the chart's default image (ghcr.io/<repository>:<appVersion>; the chart's version is its appVersion)
    refs["spark-operator"] = f"ghcr.io/kubeflow/spark-operator/controller:{v['spark']['operator_chart']['version']}"
    m = v["mongo"]
    # the chart's default image (its appVersion is the chart's version) and the cluster object's spec.image
    refs["psmdb-operator"] = docker_io(f"percona/percona-server-mongodb-operator:{m['psmdb_chart_version']}")
    refs["mongod"] = docker_io(str(m["psmdb_image"]))
    return refs


def docker_io(ref: str) -> str:
    """REF as containerd names it: a reference without a registry host is Docker Hub's
    (``busybox:1.35.0`` -> ``docker.io/library/busybox:1.35.0``)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


def _env() -> dict[str, str]:
    return {**os.environ, "CACHE": str(config.cache_dir()), "ROOT": str(ROOT)}


def bin_dir(component: str) -> Path:
    """The bin folder kube-build.sh filled for COMPONENT (kubernetes, etcd, coredns, flannel, cni, helm, local-path)."""
    out = subprocess.run(["bash", str(KUBE_BUILD), "--dest", component], env=_env(), check=True, capture_output=True, text=True)
    d = Path(out.stdout.strip())
    if not (d.parent / ".done").exists():
        raise FileNotFoundError(
            f"{d} is not built (no {d.parent / '.done'}); run ./dev setup (include/scripts/setup.d/kube-build.sh)"
        )
    return d


def lab_rootfs() -> Path:
    """The lab's Debian root filesystem folder (rootfs/ and pool/), built by the setup step when missing."""
    from tests.lab.lab import rootfs_dir

    return rootfs_dir()


def _go() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def kubernetes_source(version: str) -> Path:
    """k8s.io/kubernetes's module source in Go's module cache (go mod download)."""
    env = {**os.environ, "GOFLAGS": "", "GO111MODULE": "on"}
    out = subprocess.run(
        [_go(), "mod", "download", "-json", f"k8s.io/kubernetes@{_vtag(version)}"],
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def busybox_binary() -> Path:
    """/bin/busybox of Debian's busybox-static (installed on the host by ./dev setup)."""
    out = subprocess.run(["dpkg-query", "-L", "busybox-static"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.endswith("/bin/busybox") and Path(line).is_file():
            return Path(line)
    raise FileNotFoundError("busybox-static is not installed (apt-get install busybox-static; ./dev setup does it)")


def spark_os_root() -> Path:
    """The Debian root of the Spark image (include/scripts/setup.d/spark-os.sh; built when missing)."""
    dest = Path(subprocess.run(["bash", str(SPARK_OS_STEP), "--dest"], env=_env(), check=True, capture_output=True,
                               text=True).stdout.strip())  # fmt: skip
    if not (dest / ".done").exists():
        print(f"lab | building the Spark image's Debian root once ({dest}); about a minute", file=sys.stderr)
        subprocess.run(["bash", str(SPARK_OS_STEP)], check=True, env=_env())
    return dest / "rootfs"


def _check_arch() -> None:
    if platform.machine() != "x86_64":
        raise RuntimeError(f"the lab mirror builds {ARCH} images only, this machine is {platform.machine()}")


def _stat_key(paths: list[Path]) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths)]


def _self_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


# --- layers ---------------------------------------------------------------------


@dataclass
class _Entry:
    kind: str  # file | dir | link
    mode: int = 0o755
    src: Path | None = None
    data: bytes | None = None
    target: str = ""


class _Tree:
    """The members of one layer, by path inside the image (no leading slash)."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}

    def dir(self, path: str, mode: int = 0o755) -> None:
        self.entries.setdefault(path.strip("/"), _Entry("dir", mode))

    def file(self, path: str, src: Path | None = None, data: bytes | None = None, mode: int | None = None) -> None:
        if mode is None:
            mode = (src.stat().st_mode & 0o7777) if src is not None else 0o644
        self.entries[path.strip("/")] = _Entry("file", mode, src=src, data=data)

    def link(self, path: str, target: str) -> None:
        self.entries[path.strip("/")] = _Entry("link", 0o777, target=target)

    def add_from(self, roots: list[Path], rel: str) -> None:
        """ROOT/REL of the first root that has it, with every symlink met on the way (a path as the loader sees it)."""
        for path, root, kind, target in _walk(roots, rel):
            if kind == "link":
                self.link(path, target)
            elif kind == "file":
                self.file(path, root / path)

    def members(self) -> list[tuple[str, _Entry]]:
        full = dict(self.entries)
        for path in list(full):
            for parent in PurePosixPath(path).parents:
                if str(parent) != ".":
                    full.setdefault(str(parent), _Entry("dir", 0o755))
        return sorted(full.items(), key=lambda kv: PurePosixPath(kv[0]).parts)


def _walk(roots: list[Path], rel: str, depth: int = 0) -> list[tuple[str, Path, str, str]]:
    """[(path, root, kind, link target)] resolving REL component by component across ROOTS."""
    if depth > 40:
        raise RuntimeError(f"symlink loop at {rel}")
    parts = PurePosixPath(rel.lstrip("/")).parts
    for i in range(1, len(parts) + 1):
        cur = "/".join(parts[:i])
        have = [r for r in roots if os.path.lexists(r / cur)]
        if not have:
            raise FileNotFoundError(f"{cur} is in none of {', '.join(map(str, roots))}")
        # the trees are overlaid: a symlink in any of them wins (usrmerge's /lib -> usr/lib over a .deb's lib/)
        root = next((r for r in have if (r / cur).is_symlink()), have[0])
        p = root / cur
        if p.is_symlink():
            target = os.readlink(p)
            base = PurePosixPath(cur).parent
            nxt = target.lstrip("/") if target.startswith("/") else os.path.normpath(str(base / target))
            rest = "/".join(parts[i:])
            return [(cur, root, "link", target), *_walk(roots, f"{nxt}/{rest}" if rest else nxt, depth + 1)]
    p = next(r for r in roots if os.path.lexists(r / rel.lstrip("/")))
    return [(rel.lstrip("/"), p, "dir" if (p / rel.lstrip("/")).is_dir() else "file", "")]


class _HashSink:
    """A write-through file object that counts and hashes what passes."""

    def __init__(self, out) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.out.write(b)
        return len(b)

    def flush(self) -> None:
        self.out.flush()


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex>
    size: int
    media_type: str
    path: Path

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _write_blob(layout: Path, data: bytes, media_type: str) -> Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = _blob_path(layout, digest)
    if not p.exists():
        p.write_bytes(data)
    return Blob(digest, len(data), media_type, p)


def _write_layer(layout: Path, tree: _Tree) -> tuple[Blob, str]:
    """The layer as tar+gzip in LAYOUT's blobs; (blob, diff_id)."""
    tmp = layout / "blobs" / f".layer-{secrets.token_hex(6)}"
    with open(tmp, "wb") as f:
        outer = _HashSink(f)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:  # type: ignore[arg-type]
            inner = _HashSink(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=1 << 20) as tar:  # type: ignore[call-overload]
                for path, e in tree.members():
                    ti = tarfile.TarInfo(path)
                    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "root", "root"
                    ti.mode = e.mode
                    if e.kind == "dir":
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif e.kind == "link":
                        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e.target, 0o777
                        tar.addfile(ti)
                    elif e.data is not None:
                        ti.size = len(e.data)
                        tar.addfile(ti, io.BytesIO(e.data))
                    else:
                        assert e.src is not None
                        ti.size = e.src.stat().st_size
                        with open(e.src, "rb") as src:
                            tar.addfile(ti, src)
    digest = "sha256:" + outer.sha.hexdigest()
    final = _blob_path(layout, digest)
    if final.exists():
        tmp.unlink()
    else:
        tmp.rename(final)
    return Blob(digest, outer.size, OCI_LAYER, final), "sha256:" + inner.sha.hexdigest()


# --- the layers of the lab's images ------------------------------------------


def _base_tree() -> _Tree:
    """What a distroless static base has: passwd/group, nsswitch.conf, /tmp."""
    t = _Tree()
    t.file("etc/passwd", data=b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    t.file("etc/group", data=b"root:x:0:\nnobody:x:65534:\n")
    t.file("etc/nsswitch.conf", data=b"hosts: files dns\n")
    t.dir("tmp", 0o1777)
    t.dir("root", 0o700)
    return t


def _usrmerge(t: _Tree) -> None:
    for d in ("bin", "sbin", "lib", "lib64"):
        t.link(d, f"usr/{d}")


def _pool_closure(pool: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """NAMES and their dependencies that are in the pool (the rest is in the root filesystem)."""
    debs: dict[str, Path] = {}
    for deb in pool.glob("*.deb"):
        debs.setdefault(deb.name.split("_", 1)[0], deb)
    out: dict[str, Path] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out or name not in debs:
            if name in names and name not in debs:
                raise FileNotFoundError(f"{name} is not in the lab package pool {pool}")
            continue
        out[name] = debs[name]
        depends = subprocess.run(
            ["dpkg-deb", "-f", str(debs[name]), "Depends"], check=True, capture_output=True, text=True
        ).stdout
        for dep in depends.replace("|", ",").split(","):
            dep = dep.strip().split(" ", 1)[0].split(":", 1)[0]
            if dep:
                todo.append(dep)
    return out


def _is_elf(p: Path) -> bool:
    if p.is_symlink() or not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"\x7fELF"


def _needed(loader: Path, library_path: list[Path], elf: Path) -> list[Path]:
    """The libraries ELF loads, resolved by the root filesystem's own loader (ldd = ld.so --list)."""
    out = subprocess.run(
        [str(loader), "--library-path", ":".join(map(str, library_path)), "--list", str(elf)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ldd {elf}: {out.stdout}{out.stderr}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise RuntimeError(f"ldd {elf}: {line}")
        if "=>" in line:
            path = line.split("=>", 1)[1].strip().split(" (", 1)[0]
            if path.startswith("/"):
                libs.append(Path(path))
    return libs


def _netfilter_tree(work: Path) -> _Tree:
    """nft, iptables (nft and legacy), conntrack and their libraries, from Debian bookworm (like distroless-iptables)."""
    lab = lab_rootfs()
    rootfs, pool = lab / "rootfs", lab / "pool"
    stage = work / "netfilter"
    stage.mkdir()
    for deb in _pool_closure(pool, NETFILTER_PACKAGES).values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(stage)], check=True)
    roots = [stage, rootfs]
    t = _Tree()
    _usrmerge(t)
    elves: list[str] = []
    for base in ("usr/sbin", "usr/bin", f"usr/lib/{MULTIARCH}"):
        for p in sorted((stage / base).rglob("*")) if (stage / base).is_dir() else []:
            rel = str(p.relative_to(stage))
            if p.is_dir() and not p.is_symlink():
                continue
            if p.name.endswith("-apply") or (not p.is_symlink() and not _is_elf(p)):
                continue  # shell helpers (iptables-apply) need a shell the image has not
            t.add_from(roots, rel)
            if _is_elf(p):
                elves.append(rel)
    for name in IPTABLES_LINKS:
        t.link(f"usr/sbin/{name}", "xtables-nft-multi")
    for name in ("protocols", "services", "ethertypes", "rpc"):  # netbase: protocol and port names
        if (stage / "etc" / name).exists():
            t.file(f"etc/{name}", stage / "etc" / name)
    loader_rel = _walk([rootfs], LOADER)[-1][0]
    t.add_from(roots, LOADER)
    libpath = [r / "usr" / "lib" / MULTIARCH for r in roots]
    for rel in elves:
        for lib in _needed(rootfs / loader_rel, libpath, stage / rel):
            root = next((r for r in roots if lib.is_relative_to(r)), None)
            if root is None:
                raise RuntimeError(f"{rel} would load {lib}, outside the Debian trees")
            t.add_from(roots, str(lib.relative_to(root)))
    return t


def _busybox_tree(applets: tuple[str, ...] = BUSYBOX_APPLETS, where: str = "usr/bin") -> _Tree:
    t = _Tree()
    t.file(f"{where}/busybox", busybox_binary(), mode=0o755)
    for applet in applets:
        t.link(f"{where}/{applet}", "busybox")
    return t


def _rootfs_tree(root: Path) -> _Tree:
    """A whole root filesystem as one layer: folders with their modes, files, symlinks; not the
    contents of dev, proc, sys and run (the runtime mounts those), nor device nodes."""
    t = _Tree()
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        rel = d.relative_to(root).as_posix()
        if rel != ".":
            t.entries[rel] = _Entry("dir", d.stat().st_mode & 0o7777)
        if rel in ("dev", "proc", "sys", "run"):
            dirnames[:] = []
            continue
        for name in sorted(dirnames + filenames):
            p = d / name
            path = name if rel == "." else f"{rel}/{name}"
            if p.is_symlink():
                t.link(path, os.readlink(p))
                dirnames[:] = [x for x in dirnames if x != name]
            elif p.is_file():
                t.file(path, p)
    return t


def _dist_files(names: tuple[str, ...]) -> dict[str, Path]:
    """Site-relative path -> file of the installed distributions NAMES and everything they require
    (requirements whose marker holds here; extras left out)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(names)
    out: dict[str, Path] = {}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = md.distribution(name)
        for f in dist.files or []:
            rel = f.as_posix()
            if not (rel.startswith("..") or "__pycache__" in rel):
                out[rel] = Path(str(f.locate()))
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def _dist_version(name: str) -> str:
    import importlib.metadata as md

    return md.version(name)


def _site_tree(dists: tuple[str, ...]) -> _Tree:
    """The installed distributions DISTS (and what they require) in Debian python3.11's site."""
    t = _Tree()
    for rel, src in _dist_files(dists).items():
        if src.is_file():
            t.file(f"{SPARK_SITE}/{rel}", src)
    return t


def _spark_app_tree(os_root: Path, jars: list[Path]) -> _Tree:
    """The connector jars into Spark's jars, /opt/spark, the entrypoint and the spark user."""
    t = _Tree()
    for jar in jars:
        t.file(f"{SPARK_SITE}/pyspark/jars/{jar.name}", jar, mode=0o644)
    t.link("opt/spark", f"/{SPARK_SITE}/pyspark")
    t.file("opt/entrypoint.sh", SPARK_ENTRYPOINT, mode=0o755)
    t.dir("opt/spark-work", 0o1777)
    passwd = (os_root / "etc/passwd").read_text() + f"spark:x:{SPARK_UID}:{SPARK_UID}:Spark:/opt/spark-work:/bin/bash\n"
    group = (os_root / "etc/group").read_text() + f"spark:x:{SPARK_UID}:\n"
    t.file("etc/passwd", data=passwd.encode(), mode=0o644)
    t.file("etc/group", data=group.encode(), mode=0o644)
    return t


def _busybox_applets() -> tuple[str, ...]:
    out = subprocess.run([str(busybox_binary()), "--list"], check=True, capture_output=True, text=True).stdout.split()
    return tuple(a for a in out if a != "busybox" and "/" not in a and not a.startswith("["))


def _pause_binary(work: Path, kube_version: str, pause_version: str) -> Path:
    src = kubernetes_source(kube_version) / "build" / "pause" / "linux" / "pause.c"
    out = work / "pause"
    version = f"v{pause_version}-{_vtag(kube_version)}"  # the Makefile's v$(TAG)-$(git describe)
    subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={version}", "-o", str(out), str(src)], check=True)
    subprocess.run(["strip", str(out)], check=True)
    return out


def _bin_tree(files: dict[str, Path]) -> _Tree:
    t = _Tree()
    for rel, src in files.items():
        t.file(rel, src, mode=0o755)
    return t


@dataclass(frozen=True)
class _Spec:
    component: str
    ref: str
    layers: tuple[str, ...]
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str = ""
    path: str = PATH_ENV
    source: str = ""
    env: tuple[str, ...] = ()
    workdir: str = "/"


def _specs() -> list[_Spec]:
    refs = image_refs()
    v = versions()["kubernetes"]
    kube = f"k8s.io/kubernetes {_vtag(str(v['version']))}"
    specs = [_Spec(c, refs[c], ("base", c), source=kube) for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    specs += [
        _Spec(
            "kube-proxy",
            refs["kube-proxy"],
            ("base", "netfilter", "kube-proxy"),
            source=kube + " + Debian bookworm nftables/iptables/conntrack",
        ),
        _Spec(
            "etcd", refs["etcd"], ("base", "etcd"), cmd=("/usr/local/bin/etcd",), source=f"go.etcd.io/etcd v{v['etcd_version']}"
        ),
        _Spec(
            "coredns",
            refs["coredns"],
            ("base", "coredns"),
            entrypoint=("/coredns",),
            source=f"github.com/coredns/coredns {v['coredns_version']}",
        ),
        _Spec(
            "pause",
            refs["pause"],
            ("pause",),
            entrypoint=("/pause",),
            user="65535:65535",
            source=kube + " build/pause/linux/pause.c",
        ),
        _Spec(
            "flannel",
            refs["flannel"],
            ("base", "netfilter", "busybox", "flannel"),
            entrypoint=("/opt/bin/flanneld",),
            path="/opt/bin:" + PATH_ENV,
            source=f"github.com/flannel-io/flannel {versions()['network']['flannel_version']} + Debian bookworm nftables/iptables, busybox-static",
        ),
        _Spec(
            "local-path-provisioner",
            refs["local-path-provisioner"],
            ("base", "local-path"),
            cmd=("local-path-provisioner",),
            source=f"github.com/rancher/local-path-provisioner {refs['local-path-provisioner'].rsplit(':', 1)[1]}",
        ),
        _Spec(
            "busybox",
            refs["busybox"],
            ("base", "busybox-bin"),
            cmd=("sh",),
            source="Debian bookworm busybox-static, every applet in /bin (as the busybox image has them)",
        ),
        _Spec(
            "spark",
            refs["spark"],
            ("spark-os", "spark-python", "spark-app"),
            entrypoint=("/opt/entrypoint.sh",),
            user=str(SPARK_UID),
            env=(f"JAVA_HOME={JAVA_HOME}", "SPARK_HOME=/opt/spark", "PYSPARK_PYTHON=python3", "PYSPARK_DRIVER_PYTHON=python3"),
            workdir="/opt/spark-work",
            source="Debian bookworm (openjdk-17-jre-headless, python3, tini) + the pyspark wheel's Spark "
            f"{versions()['local']['spark']} + numpy/pandas/pyarrow wheels + the MongoDB Spark connector jars",
        ),
        _Spec(
            "spark-operator",
            refs["spark-operator"],
            ("spark-os", "spark-python", "spark-app", "operator-double"),
            entrypoint=("/usr/bin/python3", "/opt/spark-operator-double.py"),
            user=str(SPARK_UID),
            env=(f"JAVA_HOME={JAVA_HOME}", "SPARK_HOME=/opt/spark", "PYSPARK_PYTHON=python3"),
            workdir="/opt/spark-work",
            source="STAND-IN (a double): the lab's Spark image + tests/lab/spark_operator_double.py, which submits "
            "SparkApplications with the real spark-submit and writes their status; the operator's Go module is not served",
        ),
        *(
            _Spec(
                c,
                refs[c],
                ("spark-os", "mongo-python", "mongo-double"),
                entrypoint=("/usr/bin/python3", "/opt/mongo-double.py"),
                user="1001",
                source="STAND-IN (a double): Debian python3 + FerretDB "
                f"{versions()['local']['ferretdb']} (Go, built here) + tests/lab/psmdb_operator_double.py "
                "(the operator's controller) + tests/lab/mongo_double.py (mongod/mongos in front of FerretDB); "
                "neither the operator nor mongod can be built here",
            )
            for c in ("psmdb-operator", "mongod")
        ),
        _Spec(
            "probe",
            refs["probe"],
            ("base", "busybox-all"),
            entrypoint=("/usr/bin/sh",),
            source="Debian bookworm busybox-static, every applet (the lab's test pods)",
        ),
    ]
    return specs


def image_table() -> list[tuple[str, str, str]]:
    """(reference, real | stand-in, what it is built from) of every image the lab serves."""
    return [(sp.ref, "stand-in" if sp.source.startswith("STAND-IN") else "real", sp.source) for sp in _specs()]


def _inputs() -> tuple[dict, dict[str, Path]]:
    """(hash key, named input files) of the images."""
    v = versions()
    kbin, ebin = bin_dir("kubernetes"), bin_dir("etcd")
    files = {
        "kube-apiserver": kbin / "kube-apiserver",
        "kube-controller-manager": kbin / "kube-controller-manager",
        "kube-scheduler": kbin / "kube-scheduler",
        "kube-proxy": kbin / "kube-proxy",
        "etcd": ebin / "etcd",
        "etcdctl": ebin / "etcdctl",
        "etcdutl": ebin / "etcdutl",
        "coredns": bin_dir("coredns") / "coredns",
        "flanneld": bin_dir("flannel") / "flanneld",
        "local-path-provisioner": bin_dir("local-path") / "local-path-provisioner",
        "busybox": busybox_binary(),
        "spark-entrypoint": SPARK_ENTRYPOINT,
        "operator-double": OPERATOR_DOUBLE,
        "double-api": DOUBLE_API,
        "psmdb-double": PSMDB_DOUBLE,
        "mongo-double": MONGO_DOUBLE,
        "ferretdb": ferretdb_binary(),
        **{f"jar:{j.name}": j for j in spark_jars()},
    }
    for name, p in files.items():
        if not p.is_file():
            raise FileNotFoundError(f"{name}: {p} is missing")
    lab = lab_rootfs()
    spark_os = spark_os_root()
    k = v["kubernetes"]
    key = {
        "refs": image_refs(),
        "kube": str(k["version"]),
        "pause": str(k["pause_version"]),
        "files": _stat_key(list(files.values())),
        "pool": sorted(p.name for p in (lab / "pool").glob("*.deb")),
        "rootfs": str(lab),
        "spark-os": str(spark_os),
        "spark-python": sorted(f"{d}=={_dist_version(d)}" for d in SPARK_PYTHON_DISTS),
        "mongo-python": sorted(f"{d}=={_dist_version(d)}" for d in MONGO_PYTHON_DISTS),
        "code": _self_hash(),
    }
    return key, files


def _image_config(spec: _Spec, diff_ids: list[str]) -> dict:
    cfg: dict = {"Env": [f"PATH={spec.path}", *spec.env], "WorkingDir": spec.workdir}
    if spec.entrypoint:
        cfg["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        cfg["Cmd"] = list(spec.cmd)
    if spec.user:
        cfg["User"] = spec.user
    name, tag = spec.ref.rsplit(":", 1)
    cfg["Labels"] = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.description": f"datacloud lab image built from {spec.source} (tests/lab/mirror.py)",
    }
    return {
        "created": "1970-01-01T00:00:00Z",
        "architecture": ARCH,
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"tests/lab/mirror.py layer {n}"} for n in spec.layers],
    }


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Image:
    ref: str  # upstream reference, e.g. registry.k8s.io/kube-apiserver:v1.34.2
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def name(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]

    @property
    def upstream(self) -> str:
        """The upstream registry host (first path component)."""
        return self.name.split("/", 1)[0]

    def config_json(self) -> dict:
        return json.loads(self.config.path.read_bytes())


@dataclass(frozen=True)
class ImageSet:
    dir: Path  # an OCI image layout
    images: tuple[Image, ...]
    built: bool = False  # True when this call built it (not from the cache)
    seconds: float = 0.0

    def __getitem__(self, ref: str) -> Image:
        for im in self.images:
            if im.ref == ref:
                return im
        raise KeyError(ref)

    @property
    def refs(self) -> list[str]:
        return [im.ref for im in self.images]

    @property
    def upstreams(self) -> list[str]:
        return sorted({im.upstream for im in self.images})

    @classmethod
    def load(cls, layout: Path, **kw) -> ImageSet:
        index = json.loads((layout / "index.json").read_text())
        images = []
        for desc in index["manifests"]:
            mpath = _blob_path(layout, desc["digest"])
            m = json.loads(mpath.read_bytes())

            def blob(d: dict) -> Blob:
                return Blob(d["digest"], d["size"], d["mediaType"], _blob_path(layout, d["digest"]))

            images.append(
                Image(
                    desc["annotations"]["io.containerd.image.name"],
                    Blob(desc["digest"], desc["size"], desc["mediaType"], mpath),
                    blob(m["config"]),
                    tuple(blob(x) for x in m["layers"]),
                )
            )
        return cls(layout, tuple(images), **kw)


def build_images() -> ImageSet:
    """The lab's images as an OCI layout in the cache (built when the inputs changed)."""
    _check_arch()
    t0 = time.monotonic()
    key, files = _inputs()
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    layout = config.cache_dir() / "lab" / f"images-{h}"
    if (layout / "index.json").exists():
        return ImageSet.load(layout, seconds=time.monotonic() - t0)
    layout.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.with_name(layout.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    work = tmp / ".work"
    work.mkdir()
    try:
        v = versions()["kubernetes"]
        spark_os = Path(key["spark-os"])  # what _inputs found (and built when it was missing)
        trees = {
            "base": _base_tree(),
            "netfilter": _netfilter_tree(work),
            "busybox": _busybox_tree(),
            "busybox-all": _busybox_tree(_busybox_applets()),
            "busybox-bin": _busybox_tree(_busybox_applets(), where="bin"),
            "spark-os": _rootfs_tree(spark_os),
            "spark-python": _site_tree(SPARK_PYTHON_DISTS),
            "operator-double": _bin_tree(
                {"opt/spark-operator-double.py": files["operator-double"], "opt/double_api.py": files["double-api"]}
            ),
            "mongo-python": _site_tree(MONGO_PYTHON_DISTS),
            "mongo-double": _bin_tree(
                {
                    "usr/local/bin/ferretdb": files["ferretdb"],
                    # the chart's Deployment runs the operator by this name
                    "usr/local/bin/percona-server-mongodb-operator": files["psmdb-double"],
                    "opt/double_api.py": files["double-api"],
                    "opt/mongo-double.py": files["mongo-double"],
                }
            ),
            "spark-app": _spark_app_tree(spark_os, [files[n] for n in sorted(files) if n.startswith("jar:")]),
            "local-path": _bin_tree({"usr/bin/local-path-provisioner": files["local-path-provisioner"]}),
            "etcd": _bin_tree({f"usr/local/bin/{n}": files[n] for n in ("etcd", "etcdctl", "etcdutl")}),
            "coredns": _bin_tree({"coredns": files["coredns"]}),
            "flannel": _bin_tree({"opt/bin/flanneld": files["flanneld"]}),
            "pause": _bin_tree({"pause": _pause_binary(work, str(v["version"]), str(v["pause_version"]))}),
        }
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
            trees[c] = _bin_tree({f"usr/local/bin/{c}": files[c]})
        # biggest first: two compressors in parallel (zlib releases the GIL)
        order = sorted(trees, key=lambda n: -sum((e.src.stat().st_size if e.src else 0) for e in trees[n].entries.values()))
        with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
            layers = dict(zip(order, pool.map(lambda n: _write_layer(tmp, trees[n]), order), strict=True))
        manifests = []
        for spec in _specs():
            blobs = [layers[n][0] for n in spec.layers]
            cfg = _write_blob(tmp, _dumps(_image_config(spec, [layers[n][1] for n in spec.layers])), OCI_CONFIG)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": cfg.descriptor(),
                "layers": [b.descriptor() for b in blobs],
            }
            m = _write_blob(tmp, _dumps(manifest), OCI_MANIFEST)
            manifests.append(
                {
                    **m.descriptor(),
                    "platform": {"architecture": ARCH, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": spec.ref,
                        "org.opencontainers.image.ref.name": spec.ref.rsplit(":", 1)[1],
                    },
                }
            )
        (tmp / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
        (tmp / "index.json").write_bytes(_dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
        shutil.rmtree(work)
        _publish(tmp, layout, built=(layout / "index.json").exists)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(layout.parent, "images-", layout)
    return ImageSet.load(layout, built=True, seconds=time.monotonic() - t0)


def _publish(tmp: Path, dest: Path, *, built) -> None:
    """Move a finished build folder TMP into the cache at DEST, unless ``built()`` says
    another process finished DEST meanwhile (then TMP is dropped)."""
    if built():
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)


def _prune(parent: Path, prefix: str, keep: Path, *, spare: int = 2, age_s: float = 3600) -> None:
    """Other builds but the SPARE newest, once older than AGE_S (another checkout may still use its own;
    each build is most of a GiB and the host's free disk is what kubelet on the lab's nodes lives on)."""

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:  # another checkout pruned it
            return 0.0

    others = sorted((p for p in parent.glob(prefix + "*") if p != keep and ".tmp" not in p.name), key=mtime, reverse=True)
    for old in others[spare:]:
        if time.time() - mtime(old) > age_s:
            shutil.rmtree(old, ignore_errors=True)


# --- the registry ---------------------------------------------------------------


def default_storage() -> Path:
    """Registry storage shared by every lab on this machine (pushes survive labs)."""
    return config.cache_dir() / "lab" / "registry"


@dataclass
class PushResult:
    uploaded: list[str] = field(default_factory=list)  # "<repository>@<digest>" of every blob sent
    mounted: list[str] = field(default_factory=list)  # blobs linked from another repository (no bytes sent)
    present: int = 0  # blobs the repository already had
    bytes_uploaded: int = 0
    manifests_put: list[str] = field(default_factory=list)
    manifests_present: int = 0
    seconds: float = 0.0


class RegistryError(RuntimeError):
    pass


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy: the lab registry is local


class Registry:
    """Debian's docker-registry (distribution 2.8) serving STORAGE_DIR on http://ADDRESS:PORT."""

    def __init__(self, address: str, port: int, storage_dir: Path | None = None, run_dir: Path | None = None) -> None:
        self.address = address
        self.port = port
        self.storage_dir = Path(storage_dir or default_storage())
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else None
        self.pid = 0
        self.start_time: str | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    def config_text(self) -> str:
        return (
            "# written by tests/lab/mirror.py\n"
            "version: 0.1\n"
            "log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {json.dumps(str(self.storage_dir))}\n"
            "  delete:\n    enabled: false\n"
            "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 24h\n      interval: 24h\n      dryrun: false\n"
            "http:\n"
            f"  addr: {json.dumps(self.host)}\n"
            f"  secret: {secrets.token_hex(16)}\n"
            "  headers:\n    X-Content-Type-Options: [nosniff]\n"
            "health:\n  storagedriver:\n    enabled: false\n"
        )

    def start(self, timeout: float = 20) -> Registry:
        exe = shutil.which("docker-registry")
        if exe is None:
            raise FileNotFoundError("docker-registry is not installed (apt-get install docker-registry; ./dev setup does it)")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="datacloud-registry-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.run_dir / "registry.yml"
        cfg.write_text(self.config_text())
        cfg.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_") and not k.lower().endswith("_proxy")}
        with open(self.run_dir / "registry.log", "ab") as log:
            self._proc = subprocess.Popen(
                [exe, "serve", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid, self.start_time = self._proc.pid, process_start_time(self._proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log_text = (self.run_dir / "registry.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RegistryError(f"docker-registry exited with {self._proc.returncode}: {log_text}")
            with contextlib.suppress(OSError):
                if self._request("GET", "/v2/")[0] == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RegistryError(f"docker-registry did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.pid and self.start_time and process_start_time(self.pid) == self.start_time:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while process_start_time(self.pid) == self.start_time and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            if process_start_time(self.pid) == self.start_time:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                while process_start_time(self.pid) == self.start_time:
                    self._reap()
                    time.sleep(0.05)
        self._reap()
        self.pid, self.start_time, self._proc = 0, None, None
        if self._own_run_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)

    def running(self) -> bool:
        return bool(self.pid) and process_start_time(self.pid) == self.start_time

    def state(self) -> dict:
        return {
            "address": self.address,
            "port": self.port,
            "storage_dir": str(self.storage_dir),
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "own_run_dir": self._own_run_dir,
            "pid": self.pid,
            "start_time": self.start_time,
        }

    @classmethod
    def from_state(cls, d: dict) -> Registry:
        r = cls(d["address"], d["port"], Path(d["storage_dir"]), Path(d["run_dir"]) if d["run_dir"] else None)
        r._own_run_dir = d["own_run_dir"]
        r.pid, r.start_time = d["pid"], d["start_time"]
        return r

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP API --
    def _request(self, method: str, path_or_url: str, data=None, headers: dict | None = None, timeout: float = 600):
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def manifest_digest(self, name: str, tag: str, media_type: str = OCI_MANIFEST) -> str | None:
        status, headers, _ = self._request("HEAD", f"/v2/{name}/manifests/{tag}", headers={"Accept": media_type})
        return headers.get("Docker-Content-Digest") if status == 200 else None

    def has_blob(self, name: str, digest: str) -> bool:
        return self._request("HEAD", f"/v2/{name}/blobs/{digest}")[0] == 200

    def catalog(self) -> list[str]:
        status, _, body = self._request("GET", "/v2/_catalog?n=1000")
        if status != 200:
            raise RegistryError(f"GET /v2/_catalog: {status} {body[:300]!r}")
        return json.loads(body)["repositories"]

    def push(self, images: ImageSet) -> PushResult:
        """Every image of IMAGES under its upstream name; only what the registry lacks is sent."""
        t0 = time.monotonic()
        res = PushResult()
        seen: dict[str, str] = {}  # digest -> a repository known to hold it
        for im in images.images:
            for blob in (im.config, *im.layers):
                self._push_blob(im.name, blob, seen, res)
            if self.manifest_digest(im.name, im.tag, im.manifest.media_type) == im.manifest.digest:
                res.manifests_present += 1
                continue
            status, headers, body = self._request(
                "PUT",
                f"/v2/{im.name}/manifests/{im.tag}",
                data=im.manifest.path.read_bytes(),
                headers={"Content-Type": im.manifest.media_type},
            )
            if status != 201 or headers.get("Docker-Content-Digest") != im.manifest.digest:
                raise RegistryError(f"PUT manifest {im.ref}: {status} {headers.get('Docker-Content-Digest')} {body[:500]!r}")
            res.manifests_put.append(im.ref)
        res.seconds = time.monotonic() - t0
        return res

    def _push_blob(self, name: str, blob: Blob, seen: dict[str, str], res: PushResult) -> None:
        if self.has_blob(name, blob.digest):
            res.present += 1
            seen.setdefault(blob.digest, name)
            return
        query = ""
        if blob.digest in seen:  # already in another repository: link it, send nothing
            query = "?" + urllib.parse.urlencode({"mount": blob.digest, "from": seen[blob.digest]})
        status, headers, body = self._request(
            "POST", f"/v2/{name}/blobs/uploads/{query}", data=b"", headers={"Content-Length": "0"}
        )
        if status == 201 and query:
            res.mounted.append(f"{name}@{blob.digest}")
            return
        if status != 202 or not headers.get("Location"):
            raise RegistryError(f"POST upload {name}: {status} {body[:500]!r}")
        location = urllib.parse.urljoin(self.url + "/", headers["Location"])
        sep = "&" if "?" in location else "?"
        with open(blob.path, "rb") as f:
            status, headers, body = self._request(
                "PUT",
                f"{location}{sep}digest={urllib.parse.quote(blob.digest, safe='')}",
                data=f,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)},
            )
        if status != 201:
            raise RegistryError(f"PUT blob {name}@{blob.digest}: {status} {body[:500]!r}")
        res.uploaded.append(f"{name}@{blob.digest}")
        res.bytes_uploaded += blob.size
        seen[blob.digest] = name


def hosts_toml(upstream: str, mirror_url: str) -> str:
    """containerd certs.d/<UPSTREAM>/hosts.toml: pull UPSTREAM's images from MIRROR_URL/v2/<UPSTREAM>/..."""
    return (
        f'server = "https://{upstream}"\n'
        "\n"
        f'[host."{mirror_url.rstrip("/")}/v2/{upstream}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )


def write_hosts_dir(hosts_dir: Path, mirror_url: str, upstreams: list[str]) -> list[Path]:
    """HOSTS_DIR/<upstream>/hosts.toml for every upstream (containerd's registry config_path)."""
    out = []
    for up in upstreams:
        p = Path(hosts_dir) / up / "hosts.toml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(hosts_toml(up, mirror_url))
        out.append(p)
    return out


# --- .debs of the real binaries ----------------------------------------------

KUBELET_SERVICE = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

KUBEADM_DROPIN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""

KUBELET_DEPENDS = ("kubernetes-cni", "conntrack", "iptables", "ebtables", "ethtool", "socat", "mount", "util-linux", "iproute2")
KUBEADM_DEPENDS = ("kubelet", "kubectl", "kubernetes-cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def deb(
    build: Path,
    out: Path,
    name: str,
    version: str,
    desc: str,
    files: dict[str, Path | bytes],
    *,
    arch: str = "all",
    depends: tuple[str, ...] | list[str] = (),
    links: dict[str, str] | None = None,
    dirs: tuple[str, ...] = (),
    modes: dict[str, int] | None = None,
) -> Path:
    """OUT/<name>_<version>_<arch>.deb holding FILES (path -> source file or bytes), LINKS and empty DIRS.

    Files from a path keep its mode, bytes are 0644 (MODES overrides). Root-owned, gzip (dpkg-deb --root-owner-group -Zgzip).
    DESC is one line, or a summary line and a long description.
    """
    root = build / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    size = 0
    for rel, src in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            p.write_bytes(src)
            p.chmod(0o644)
        else:
            shutil.copy2(src, p)
        if modes and rel in modes:
            p.chmod(modes[rel])
        size += p.stat().st_size
    for rel, target in (links or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    for rel in dirs:
        (root / rel.lstrip("/")).mkdir(parents=True, exist_ok=True)
    summary, _, long = desc.partition("\n")
    control = f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n"
    control += f"Installed-Size: {(size + 1023) // 1024}\n"
    if depends:
        control += f"Depends: {', '.join(depends)}\n"
    control += f"Section: admin\nPriority: optional\nDescription: {summary}\n"
    for line in long.strip("\n").splitlines():
        control += f" {line.strip() or '.'}\n"
    (root / "DEBIAN" / "control").write_text(control)
    path = out / f"{name}_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", str(root), str(path)], check=True, capture_output=True
    )
    shutil.rmtree(root)
    return path


def package_specs() -> list[dict]:
    """(name, version, files, depends, ...) of the .debs, at the versions node_prep pins."""
    v = versions()
    k, n = v["kubernetes"], v["network"]
    rev = str(k["package_revision"])
    kv = str(k["version"])
    kbin, cni, helm = bin_dir("kubernetes"), bin_dir("cni"), bin_dir("helm")
    built = f"Built from k8s.io/kubernetes v{kv} (Go module proxy) for the datacloud SSH lab."
    return [
        {
            "name": "kubelet",
            "version": f"{kv}-{rev}",
            "desc": f"Node agent for Kubernetes clusters\n{built}",
            "files": {"usr/bin/kubelet": kbin / "kubelet", "usr/lib/systemd/system/kubelet.service": KUBELET_SERVICE.encode()},
            "depends": KUBELET_DEPENDS,
        },
        {
            "name": "kubeadm",
            "version": f"{kv}-{rev}",
            "desc": f"Command-line utility for administering a Kubernetes cluster\n{built}",
            "files": {
                "usr/bin/kubeadm": kbin / "kubeadm",
                "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": KUBEADM_DROPIN.encode(),
            },
            "depends": KUBEADM_DEPENDS,
        },
        {
            "name": "kubectl",
            "version": f"{kv}-{rev}",
            "desc": f"Command-line utility for interacting with a Kubernetes cluster\n{built}",
            "files": {"usr/bin/kubectl": kbin / "kubectl"},
            "depends": (),
        },
        {
            "name": "kubernetes-cni",
            "version": f"{str(n['cni_plugins_version']).lstrip('v')}-{rev}",
            "desc": "Binaries required to provision kubernetes container networking\n"
            f"Built from github.com/containernetworking/plugins {n['cni_plugins_version']} for the datacloud SSH lab.",
            "files": {f"opt/cni/bin/{p}": cni / p for p in CNI_PLUGINS},
            "depends": (),
            "dirs": ("etc/cni/net.d",),
        },
        {
            "name": "helm",
            "version": f"{k['helm']}-{k['helm_package_revision']}",
            "desc": f"The Kubernetes package manager\nBuilt from helm.sh/helm/v3 v{k['helm']} for the datacloud SSH lab.",
            "files": {"usr/bin/helm": helm / "helm"},
            "depends": (),
        },
    ]


def build_packages(out_dir: Path) -> list[Path]:
    """The .debs of kubelet, kubeadm, kubectl, kubernetes-cni and helm in OUT_DIR (built once per input hash)."""
    _check_arch()
    specs = package_specs()
    sources = [s for spec in specs for s in spec["files"].values() if isinstance(s, Path)]
    key = {
        "specs": [{k: v for k, v in s.items() if k != "files"} for s in specs],
        "files": _stat_key(sources),
        "code": _self_hash(),
    }
    key["paths"] = [sorted(s["files"]) for s in specs]
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = config.cache_dir() / "lab" / f"debs-{h}"
    names = [f"{s['name']}_{s['version']}_{ARCH}.deb" for s in specs]
    if not all((cache / x).exists() for x in names):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / ".build").mkdir(parents=True)
        try:
            with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
                list(
                    pool.map(
                        lambda s: deb(
                            tmp / ".build",
                            tmp,
                            s["name"],
                            s["version"],
                            s["desc"],
                            s["files"],
                            arch=ARCH,
                            depends=s["depends"],
                            dirs=s.get("dirs", ()),
                        ),
                        specs,
                    )
                )
            shutil.rmtree(tmp / ".build")
            _publish(tmp, cache, built=lambda: all((cache / x).exists() for x in names))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(cache.parent, "debs-", cache)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for x in names:
        dst = out_dir / x
        dst.unlink(missing_ok=True)
        try:
            os.link(cache / x, dst)
        except OSError:
            shutil.copy2(cache / x, dst)
        out.append(dst)
    return out


# --- charts ---------------------------------------------------------------------


def chart_repository() -> Path:
    """The folder the lab serves as a Helm chart repository (upstream charts with an index.yaml)."""
    d = ROOT.parent / "shared" / "charts"
    if not (d / "index.yaml").is_file():
        raise FileNotFoundError(f"{d}/index.yaml is missing: the upstream charts sit in shared/charts beside the clone")
    return d


# --- by hand --------------------------------------------------------------------


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="tests/lab/mirror.py", description="the SSH lab's images, registry and .debs")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("images", help="build (or find) the images and list them")
    pk = sub.add_parser("packages", help="write the .debs into DIR")
    pk.add_argument("dir", type=Path)
    sv = sub.add_parser("serve", help="run a registry on ADDR:PORT with the images pushed, until Ctrl-C")
    sv.add_argument("address")
    sv.add_argument("port", type=int)
    args = p.parse_args(argv)
    if args.cmd == "images":
        s = build_images()
        print(f"{s.dir} ({'built' if s.built else 'cached'} in {s.seconds:.1f}s)")
        for im in s.images:
            print(f"  {im.ref}  {im.manifest.digest}  {sum(b.size for b in im.layers) / 1e6:.1f} MB")
        return 0
    if args.cmd == "packages":
        for x in build_packages(args.dir):
            print(x)
        return 0
    images = build_images()
    with Registry(args.address, args.port) as reg:
        r = reg.push(images)
        print(
            f"registry {reg.url}: {len(r.uploaded)} blobs uploaded, {len(r.mounted)} mounted, {r.present} present ({r.seconds:.1f}s)"
        )
        with contextlib.suppress(KeyboardInterrupt):
            while reg.running():
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
