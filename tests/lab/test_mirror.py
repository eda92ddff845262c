"""The lab's private mirror (tests/lab/mirror.py): images, registry, pulls through containerd, .debs, charts.

Expected names and versions are read from manifests/versions.yaml here, not
from the module under test. Needs root (chroot, containerd) and what ./dev setup
builds and installs (kube-build.sh binaries, docker-registry, containerd, busybox-static).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.lab import mirror
from tests.lab.scratch_containerd import ScratchContainerd

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab mirror tests need root (chroot, containerd)"),
]

V = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "versions.yaml").read_text())
K = V["kubernetes"]
KUBE = "v" + str(K["version"]).lstrip("v")
ETCD = str(K["etcd_version"]).lstrip("v")
COREDNS = "v" + str(K["coredns_version"]).lstrip("v")
PAUSE = str(K["pause_version"])
FLANNEL = "v" + str(V["network"]["flannel_version"]).lstrip("v")
HELM = str(K["helm"]).lstrip("v")
CNI = str(V["network"]["cni_plugins_version"]).lstrip("v")
REV = str(K["package_revision"])
LOCAL_PATH = "docker.io/" + str(V["storage"]["local_path_image"])
BUSYBOX = "docker.io/library/" + str(V["storage"]["local_path_helper_image"])
SPARK = f"{mirror.PROBE_REGISTRY}/{V['spark']['image']}"
SPARK_VERSION, SCALA = str(V["local"]["spark"]), str(V["local"]["scala_binary"])
SITE = "usr/local/lib/python3.11/dist-packages"
OPERATOR = f"ghcr.io/kubeflow/spark-operator/controller:{V['spark']['operator_chart']['version']}"  # a stand-in
# stand-ins: one image under the Percona operator's name and the cluster object's mongod image
PSMDB = f"docker.io/percona/percona-server-mongodb-operator:{V['mongo']['psmdb_chart_version']}"
MONGOD = f"docker.io/{V['mongo']['psmdb_image']}"
MONGO_DOUBLE_FILES = [
    "usr/local/bin/percona-server-mongodb-operator",
    "usr/local/bin/ferretdb",
    "opt/mongo-double.py",
    "opt/double_api.py",
    "usr/bin/python3",
    "bin/sh",
    f"{SITE}/bson/__init__.py",
    f"{SITE}/pymongo/__init__.py",
    f"{SITE}/dns/__init__.py",
]

EXPECTED = {
    f"registry.k8s.io/kube-apiserver:{KUBE}": ["usr/local/bin/kube-apiserver"],
    f"registry.k8s.io/kube-controller-manager:{KUBE}": ["usr/local/bin/kube-controller-manager"],
    f"registry.k8s.io/kube-scheduler:{KUBE}": ["usr/local/bin/kube-scheduler"],
    f"registry.k8s.io/kube-proxy:{KUBE}": [
        "usr/local/bin/kube-proxy",
        "usr/sbin/nft",
        "usr/sbin/iptables",
        "usr/sbin/iptables-nft",
        "usr/sbin/conntrack",
    ],
    f"registry.k8s.io/etcd:{ETCD}-0": ["usr/local/bin/etcd", "usr/local/bin/etcdctl", "usr/local/bin/etcdutl"],
    f"registry.k8s.io/coredns/coredns:{COREDNS}": ["coredns"],
    f"registry.k8s.io/pause:{PAUSE}": ["pause"],
    f"ghcr.io/flannel-io/flannel:{FLANNEL}": [
        "opt/bin/flanneld",
        "usr/sbin/nft",
        "usr/sbin/iptables",
        "bin/sh",
        "usr/bin/busybox",
    ]
    + [f"usr/bin/{a}" for a in ("cp", "cat", "sleep", "mkdir", "mv", "sh", "test")],
    "lab.datacloud.invalid/probe:busybox": [f"usr/bin/{a}" for a in ("sh", "httpd", "wget", "nslookup", "nc", "sleep")],
    LOCAL_PATH: ["usr/bin/local-path-provisioner"],
    BUSYBOX: ["bin/sh", "bin/mkdir", "bin/rm", "bin/busybox"],
    SPARK: [
        "opt/entrypoint.sh",
        "usr/bin/tini",
        "usr/bin/python3",
        "usr/lib/jvm/java-17-openjdk-amd64/bin/java",
        "opt/spark/bin/spark-submit",
        f"opt/spark/jars/spark-core_{SCALA}-{SPARK_VERSION}.jar",
        f"opt/spark/jars/spark-kubernetes_{SCALA}-{SPARK_VERSION}.jar",
        f"opt/spark/jars/mongo-spark-connector_{SCALA}-{V['local']['mongo_spark_connector']}.jar",
        "opt/spark/examples/src/main/python/pi.py",
        f"{SITE}/pandas/__init__.py",
        f"{SITE}/pyarrow/__init__.py",
        f"{SITE}/numpy/__init__.py",
        f"{SITE}/py4j/__init__.py",
    ],
    OPERATOR: [
        "opt/spark-operator-double.py",
        "opt/double_api.py",
        "opt/spark/bin/spark-submit",
        "usr/bin/python3",
        "usr/bin/openssl",
    ],
    PSMDB: MONGO_DOUBLE_FILES,
    MONGOD: MONGO_DOUBLE_FILES,
}
ENTRYPOINTS = {
    f"registry.k8s.io/coredns/coredns:{COREDNS}": ["/coredns"],
    f"registry.k8s.io/pause:{PAUSE}": ["/pause"],
    f"ghcr.io/flannel-io/flannel:{FLANNEL}": ["/opt/bin/flanneld"],
    SPARK: ["/opt/entrypoint.sh"],
    OPERATOR: ["/usr/bin/python3", "/opt/spark-operator-double.py"],
    PSMDB: ["/usr/bin/python3", "/opt/mongo-double.py"],
    MONGOD: ["/usr/bin/python3", "/opt/mongo-double.py"],
}
WORKDIRS = {SPARK: "/opt/spark-work", OPERATOR: "/opt/spark-work"}  # every other image works in /


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images() -> mirror.ImageSet:
    return mirror.build_images()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A registry on its own (empty) storage, so the first push really uploads."""
    reg = mirror.Registry("127.0.0.1", _free_port(), tmp_path_factory.mktemp("registry-storage"))
    with reg:
        yield reg
    assert not reg.running()


@pytest.fixture(scope="module")
def pushed(registry: mirror.Registry, images: mirror.ImageSet) -> tuple[mirror.PushResult, mirror.PushResult]:
    return registry.push(images), registry.push(images)


def _members(im: mirror.Image) -> dict[str, tarfile.TarInfo]:
    """The merged file system of the image: path -> member of the topmost layer holding it."""
    out: dict[str, tarfile.TarInfo] = {}
    for layer in im.layers:
        with tarfile.open(layer.path) as tar:
            for m in tar.getmembers():
                out[m.name.rstrip("/")] = m
    return out


def _extract(im: mirror.Image, dest: Path) -> Path:
    for layer in im.layers:
        with tarfile.open(layer.path) as tar:
            tar.extractall(dest, filter="fully_trusted")  # our own layers; symlinks inside the image root
    return dest


def _resolves(members: dict[str, tarfile.TarInfo], path: str, depth: int = 0) -> bool:
    """PATH exists in the merged image, following symlinks inside it."""
    if depth > 20:
        return False
    parts = PurePosixPath(path).parts
    for i in range(1, len(parts) + 1):
        cur = "/".join(parts[:i])
        m = members.get(cur)
        if m is None:
            return False
        if m.issym():
            target = (
                m.linkname.lstrip("/")
                if m.linkname.startswith("/")
                else os.path.normpath(str(PurePosixPath(cur).parent / m.linkname))
            )
            rest = "/".join(parts[i:])
            return _resolves(members, f"{target}/{rest}" if rest else target, depth + 1)
    return True


# --- images -----------------------------------------------------------------------------


def test_images_named_after_upstream_with_pinned_versions(images: mirror.ImageSet) -> None:
    assert sorted(images.refs) == sorted(EXPECTED)
    assert images.upstreams == ["docker.io", "ghcr.io", mirror.PROBE_REGISTRY, "registry.k8s.io"]
    index = json.loads((images.dir / "index.json").read_text())
    assert json.loads((images.dir / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert {m["annotations"]["io.containerd.image.name"] for m in index["manifests"]} == set(EXPECTED)


def test_images_layers_configs_and_files(images: mirror.ImageSet) -> None:
    checked: set[str] = set()
    for im in images.images:
        manifest = json.loads(im.manifest.path.read_bytes())
        assert manifest["mediaType"] == mirror.OCI_MANIFEST and manifest["schemaVersion"] == 2
        assert hashlib.sha256(im.manifest.path.read_bytes()).hexdigest() == im.manifest.digest.split(":")[1]
        cfg = im.config_json()
        assert hashlib.sha256(im.config.path.read_bytes()).hexdigest() == im.config.digest.split(":")[1]
        assert (cfg["os"], cfg["architecture"]) == ("linux", "amd64")
        assert any(e.startswith("PATH=") and "/usr/local/bin" in e for e in cfg["config"]["Env"])
        assert cfg["config"]["WorkingDir"] == WORKDIRS.get(im.ref, "/")
        if im.ref in ENTRYPOINTS:
            assert cfg["config"]["Entrypoint"] == ENTRYPOINTS[im.ref]
        assert len(cfg["rootfs"]["diff_ids"]) == len(im.layers)
        for layer, diff_id in zip(im.layers, cfg["rootfs"]["diff_ids"], strict=True):
            if layer.digest in checked:
                continue
            checked.add(layer.digest)
            data = layer.path.read_bytes()
            assert len(data) == layer.size
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
            assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
        members = _members(im)
        for path in EXPECTED[im.ref]:
            assert _resolves(members, path), f"{im.ref} lacks {path}"
        for path, m in members.items():  # no member is written through a symlink of the image
            parents = [str(p) for p in PurePosixPath(path).parents if str(p) != "."]
            assert not any(members[p].issym() for p in parents if p in members), f"{im.ref}: {path} goes through a symlink"
            assert m.uid == 0 and m.gid == 0 and m.mtime == 0
    # kube-proxy and flannel share one netfilter layer (stored and pushed once)
    kp, fl = images[f"registry.k8s.io/kube-proxy:{KUBE}"], images[f"ghcr.io/flannel-io/flannel:{FLANNEL}"]
    assert set(kp.layers) & set(fl.layers)


def test_images_cached(images: mirror.ImageSet) -> None:
    again = mirror.build_images()
    assert again.dir == images.dir and not again.built
    assert [im.manifest.digest for im in again.images] == [im.manifest.digest for im in images.images]
    assert again.seconds < 5


def _chroot(root: Path, *argv: str, netns: bool = False) -> str:
    cmd = (["unshare", "--net"] if netns else []) + ["chroot", str(root), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": mirror.PATH_ENV}, timeout=60)
    assert out.returncode == 0, f"{argv}: {out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def _chroot_netns(root: Path, *commands: list[str]) -> str:
    """COMMANDS one after the other, each chrooted into ROOT, all in one fresh network namespace."""
    script = " && ".join("chroot " + shlex.quote(str(root)) + " " + shlex.join(c) for c in commands)
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, env={"PATH": mirror.PATH_ENV}, timeout=60
    )
    assert out.returncode == 0, f"{commands}: {out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def test_netfilter_tools_and_shell_run_from_the_images(images: mirror.ImageSet, tmp_path: Path) -> None:
    kp = _extract(images[f"registry.k8s.io/kube-proxy:{KUBE}"], tmp_path / "kube-proxy")
    assert KUBE in _chroot(kp, "kube-proxy", "--version")
    assert "nftables v" in _chroot(kp, "nft", "--version")
    assert "(nf_tables)" in _chroot(kp, "iptables", "--version")
    assert "conntrack v" in _chroot(kp, "conntrack", "--version")
    # in a fresh network namespace: rules of the kinds kube-proxy writes (nft; iptables with its xtables extensions)
    (kp / "tmp" / "rules.nft").write_text(
        "table ip kube-proxy {\n  chain services {\n    type nat hook prerouting priority dstnat; policy accept;\n"
        "    ip daddr 10.96.0.1 tcp dport 443 counter dnat to 10.77.1.11:6443\n  }\n}\n"
    )
    assert "dnat to 10.77.1.11:6443" in _chroot_netns(kp, ["nft", "-f", "/tmp/rules.nft"], ["nft", "list", "ruleset"])
    (kp / "tmp" / "rules.v4").write_text(
        "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -m comment --comment kube -j KUBE-SERVICES\n"
        "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.77.1.11:6443\n"
        "-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\nCOMMIT\n"
        "*filter\n-A INPUT -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n"
    )
    saved = _chroot_netns(kp, ["iptables-restore", "/tmp/rules.v4"], ["iptables-save"], ["conntrack", "-L"])
    assert "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.77.1.11:6443" in saved
    assert "-A INPUT -m conntrack --ctstate INVALID -j DROP" in saved
    fl = _extract(images[f"ghcr.io/flannel-io/flannel:{FLANNEL}"], tmp_path / "flannel")
    assert FLANNEL in _chroot(fl, "/opt/bin/flanneld", "--version")
    script = (
        "mkdir -p /etc/cni/net.d && cat /etc/nsswitch.conf > /tmp/c && cp /tmp/c /etc/cni/net.d/x.tmp"
        " && mv /etc/cni/net.d/x.tmp /etc/cni/net.d/10-flannel.conflist && test -s /etc/cni/net.d/10-flannel.conflist"
        " && sleep 0 && echo sidecar-ok"
        " && iptables -t nat -A POSTROUTING -s 10.244.0.0/16 -m comment --comment lab -j MASQUERADE && iptables-save -t nat"
        " && nft list ruleset"
    )
    out = _chroot(fl, "/bin/sh", "-c", script, netns=True)
    assert "sidecar-ok" in out
    assert "-A POSTROUTING -s 10.244.0.0/16 -m comment --comment lab -j MASQUERADE" in out
    assert "masquerade" in out


# --- registry --------------------------------------------------------------------------------


def test_push_uploads_once_and_is_idempotent(
    registry: mirror.Registry, images: mirror.ImageSet, pushed: tuple[mirror.PushResult, mirror.PushResult]
) -> None:
    first, second = pushed
    pairs = {(im.name, b.digest) for im in images.images for b in (im.config, *im.layers)}
    distinct = {b.digest: b.size for im in images.images for b in (im.config, *im.layers)}
    assert len(first.uploaded) + len(first.mounted) == len(pairs)
    assert first.bytes_uploaded == sum(distinct.values())  # every blob sent once, shared ones mounted
    assert len(first.mounted) == len(pairs) - len(distinct)
    assert sorted(first.manifests_put) == sorted(images.refs)
    assert second.uploaded == [] and second.mounted == [] and second.bytes_uploaded == 0
    assert second.manifests_put == [] and second.manifests_present == len(images.images)
    assert second.present == len(pairs)
    assert sorted(registry.catalog()) == sorted(im.name for im in images.images)
    for im in images.images:
        assert registry.manifest_digest(im.name, im.tag) == im.manifest.digest
    print(f"\npush: {first.bytes_uploaded / 1e6:.0f} MB in {first.seconds:.2f}s; again in {second.seconds:.2f}s")


def test_registry_stops_without_leftovers(tmp_path: Path) -> None:
    reg = mirror.Registry("127.0.0.1", _free_port(), tmp_path / "storage").start()
    pid, run_dir = reg.pid, reg.run_dir
    assert reg.running() and "rootdirectory" in (run_dir / "registry.yml").read_text()
    again = mirror.Registry.from_state(json.loads(json.dumps(reg.state())))  # as a lab stops it from its saved state
    again.stop()
    assert not Path(f"/proc/{pid}").exists() or "docker-registry" not in Path(f"/proc/{pid}/cmdline").read_text()
    assert not run_dir.exists()
    reg.stop()


def test_hosts_toml_uses_the_upstream_path_prefix() -> None:
    text = mirror.hosts_toml("registry.k8s.io", "http://10.77.1.1:5000")
    assert '[host."http://10.77.1.1:5000/v2/registry.k8s.io"]' in text
    assert "override_path = true" in text and 'server = "https://registry.k8s.io"' in text


def test_pull_through_the_mirror_with_containerd(
    registry: mirror.Registry, images: mirror.ImageSet, pushed: tuple, tmp_path: Path
) -> None:
    hosts = tmp_path / "certs.d"
    mirror.write_hosts_dir(hosts, registry.url, images.upstreams)
    ctd = ScratchContainerd(tmp_path / "containerd", hosts, sandbox_image=f"registry.k8s.io/pause:{PAUSE}")
    try:
        ctd.start()
        t0 = time.monotonic()
        for ref in (
            f"registry.k8s.io/coredns/coredns:{COREDNS}",
            f"registry.k8s.io/etcd:{ETCD}-0",
            f"ghcr.io/flannel-io/flannel:{FLANNEL}",
            mirror.PROBE_REF,
            LOCAL_PATH,
            BUSYBOX,
        ):
            ctd.ctr("image", "pull", "--hosts-dir", str(hosts), ref)
        ctr_pull = time.monotonic() - t0
        assert (
            f"CoreDNS-{COREDNS.lstrip('v')}"
            in ctd.run(f"registry.k8s.io/coredns/coredns:{COREDNS}", "/coredns", "-version").stdout
        )
        assert f"etcd Version: {ETCD}" in ctd.run(f"registry.k8s.io/etcd:{ETCD}-0", "etcd", "--version").stdout
        # through the CRI plugin (registry.config_path), as kubelet and kubeadm pull on a node
        cfg = tmp_path / "kubeadm.yaml"
        cfg.write_text(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nnodeRegistration:\n"
            f"  criSocket: unix://{ctd.socket}\n---\n"
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"
            f"kubernetesVersion: {KUBE}\ndns:\n  imageTag: {COREDNS}\n"
        )
        kubeadm = mirror.bin_dir("kubernetes") / "kubeadm"
        t0 = time.monotonic()
        out = subprocess.run(
            [str(kubeadm), "config", "images", "pull", "--config", str(cfg)], capture_output=True, text=True, timeout=300
        )
        cri_pull = time.monotonic() - t0
        assert out.returncode == 0, out.stdout + out.stderr
        listed = {}
        for line in ctd.ctr("image", "ls").stdout.splitlines()[1:]:
            ref, _type, digest = line.split()[:3]
            listed[ref] = digest
        # the Spark-sized images (Spark, the operators' and mongod's stand-ins on its Debian root): pulled by the lab's nodes
        pulled = [im for im in images.images if im.ref not in (SPARK, OPERATOR, PSMDB, MONGOD)]
        for im in pulled:  # the digests we built, so nothing came from anywhere else
            assert listed.get(im.ref) == im.manifest.digest, im.ref
        assert "local-path-provisioner version " in ctd.run(LOCAL_PATH, "local-path-provisioner", "--version").stdout
        assert "BusyBox v1.35.0" in ctd.run(BUSYBOX, "/bin/sh", "-c", "busybox | head -1").stdout
        assert "pause.c v" + PAUSE in ctd.run(f"registry.k8s.io/pause:{PAUSE}", "/pause", "-v").stdout
        print(f"\nctr pull (6 images) {ctr_pull:.1f}s; kubeadm config images pull through CRI (7) {cri_pull:.1f}s")
    finally:
        ctd.stop()
    assert ctd.leftovers() == []


# --- .debs -----------------------------------------------------------------------------------


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True, text=True).stdout.strip()


def _files(deb: Path) -> set[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    return {line.split()[5].lstrip(".") for line in out.splitlines() if not line.startswith("d")}


def test_packages_versions_files_and_dependencies(tmp_path: Path) -> None:
    debs = {_field(d, "Package"): d for d in mirror.build_packages(tmp_path / "repo")}
    kv = f"{str(K['version']).lstrip('v')}-{REV}"
    assert {p: _field(d, "Version") for p, d in debs.items()} == {
        "kubelet": kv,
        "kubeadm": kv,
        "kubectl": kv,
        "kubernetes-cni": f"{CNI}-{REV}",
        "helm": f"{HELM}-{K['helm_package_revision']}",
    }
    for p, d in debs.items():
        assert d.name == f"{p}_{_field(d, 'Version')}_amd64.deb" and d.parent == tmp_path / "repo"
        assert _field(d, "Architecture") == "amd64"
    assert _files(debs["kubelet"]) == {"/usr/bin/kubelet", "/usr/lib/systemd/system/kubelet.service"}
    assert _files(debs["kubeadm"]) == {"/usr/bin/kubeadm", "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"}
    assert _files(debs["kubectl"]) == {"/usr/bin/kubectl"}
    assert _files(debs["helm"]) == {"/usr/bin/helm"}
    assert _files(debs["kubernetes-cni"]) == {f"/opt/cni/bin/{p}" for p in ("bridge", "host-local", "loopback", "portmap")}
    deps = {p: {x.strip().split(" ")[0] for x in _field(d, "Depends").split(",") if x.strip()} for p, d in debs.items()}
    assert deps["kubelet"] == {
        "kubernetes-cni",
        "conntrack",
        "iptables",
        "ebtables",
        "ethtool",
        "socat",
        "mount",
        "util-linux",
        "iproute2",
    }
    assert deps["kubeadm"] == {"kubelet", "kubectl", "kubernetes-cni"}
    # the systemd units as kubeadm expects them
    root = tmp_path / "root"
    for d in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(d), str(root)], check=True)
    dropin = (root / "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf").read_text()
    for needle in (
        "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env",
        "EnvironmentFile=-/etc/default/kubelet",
        "KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf",
        "KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml",
        "ExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS",
    ):
        assert needle in dropin
    assert "ExecStart=/usr/bin/kubelet\n" in (root / "usr/lib/systemd/system/kubelet.service").read_text()

    # the binaries report the pinned versions
    def run(*argv: str) -> str:
        return subprocess.run(
            [str(root / argv[0].lstrip("/")), *argv[1:]], check=True, capture_output=True, text=True
        ).stdout.strip()

    assert run("/usr/bin/kubeadm", "version", "-o", "short") == KUBE
    assert json.loads(run("/usr/bin/kubectl", "version", "--client", "-o", "json"))["clientVersion"]["gitVersion"] == KUBE
    assert run("/usr/bin/kubelet", "--version") == f"Kubernetes {KUBE}"
    assert run("/usr/bin/helm", "version", "--template", "{{.Version}}") == "v" + HELM
    cni = subprocess.run([str(root / "opt/cni/bin/bridge")], capture_output=True, text=True)
    assert f"v{CNI}" in cni.stdout + cni.stderr
    # cached: a second call links the same files
    again = mirror.build_packages(tmp_path / "repo2")
    assert sorted(os.stat(p).st_ino for p in again) == sorted(os.stat(p).st_ino for p in debs.values())


def test_package_dependencies_are_installable_on_lab_nodes(tmp_path: Path) -> None:
    """Every Depends of the .debs is in a lab node's root filesystem, the lab's package pool, or the .debs themselves."""
    debs = mirror.build_packages(tmp_path)
    lab = mirror.lab_rootfs()
    status = (lab / "rootfs" / "var" / "lib" / "dpkg" / "status").read_text()
    available = {line.split(": ", 1)[1] for line in status.splitlines() if line.startswith("Package: ")}
    available |= {p.name.split("_", 1)[0] for p in (lab / "pool").glob("*.deb")} | {_field(d, "Package") for d in debs}
    wanted = {x.strip().split(" ")[0] for d in debs for x in _field(d, "Depends").split(",") if x.strip()}
    assert wanted - available == set()


# --- charts ----------------------------------------------------------------------------------


def test_chart_repository_serves_the_pinned_charts(tmp_path: Path) -> None:
    charts = mirror.chart_repository()
    assert (charts / "index.yaml").is_file()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(charts)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    helm = str(mirror.bin_dir("helm") / "helm")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)

        def h(*argv: str) -> str:
            out = subprocess.run([helm, *argv], env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"helm {argv}: {out.stdout}{out.stderr}"
            return out.stdout

        h("repo", "add", "lab", f"http://127.0.0.1:{port}")
        pins = [
            c
            for section in V.values()
            if isinstance(section, dict)
            for c in section.values()
            if isinstance(c, dict) and "version" in c
        ]
        assert pins
        (tmp_path / "out").mkdir()
        for c in pins:
            h("pull", f"lab/{c['name']}", "--version", str(c["version"]), "-d", str(tmp_path / "out"))
            tgz = tmp_path / "out" / f"{c['name']}-{c['version']}.tgz"
            with tarfile.open(tgz) as tar:
                chart = yaml.safe_load(tar.extractfile(f"{c['name']}/Chart.yaml").read())  # type: ignore[union-attr]
            assert (chart["name"], str(chart["version"])) == (c["name"], str(c["version"]))
    finally:
        server.kill()
        server.wait()
