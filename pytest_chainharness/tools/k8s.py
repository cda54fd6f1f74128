"""A single-node Kubernetes cluster on this machine, for the kubernetes backend's tests.

``python -m pytest_chainharness.tools.k8s start|stop|status`` (``scripts/k8s.sh`` calls it).
``start`` builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from
the Go module proxy once (``install_kubernetes``, cached in the tools folder), then runs
etcd (Debian ``etcd-server``), a containerd of its own (Debian's, never the docker
engine's: own root, state and socket), the four components and a bridge CNI, waits for
the node to be Ready, and imports the harness's docker images into the cluster's
runtime. ``stop`` removes everything ``start`` made and puts back the three sysctls the
kubelet changes.

Every process it starts carries ``CLUSTER_MARKER`` in its environment, so ``stop`` finds
them whoever started them; everything on disk is under ``state_dir()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .._errors import ChainHarnessError, ToolNotFound
from .._proc import RUN_MARKER, find_marked, hand_over, kill_pids
from . import INSTALL_COMMAND, _reports, tools_dir, wrapper_build

__all__ = [
    "CLUSTER_MARKER",
    "KUBERNETES_VERSION",
    "KubeCluster",
    "find_kube",
    "install_kubernetes",
    "state_dir",
]

KUBERNETES_VERSION = "1.34.4"
#: The components built from ``k8s.io/kubernetes``.
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
#: Value of the run marker on every process of the cluster (``_proc.find_marked``).
CLUSTER_MARKER = "chainharness-k8s"
#: The pod network: a bridge on this host, so pod IPs are routable from here.
POD_SUBNET = "10.250.0.0/24"
BRIDGE = "chk8s0"
#: The bridge's own address: the node's IP (the kubelet refuses a loopback one), so the
#: API server reaches the kubelet over the bridge and nothing leaves this host.
NODE_IP = "10.250.0.1"
SERVICE_SUBNET = "10.251.0.0/24"
#: Fixed loopback ports, outside the range the harness draws node ports from.
ETCD_PORT = 12379
ETCD_PEER_PORT = 12380
APISERVER_PORT = 16443
KUBELET_PORT = 10250
#: The sandbox ("pause") image, built here from a few lines of C.
PAUSE_IMAGE = "chainharness/pause:3.10"
#: The kubelet sets these (always): ``start`` saves them, ``stop`` puts them back.
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")


def state_dir() -> Path:
    """Where the cluster keeps everything it writes: ``$CHAINHARNESS_K8S_DIR`` or
    ``/var/lib/chainharness-k8s`` (containerd's overlay snapshots need a real disk)."""
    return Path(os.environ.get("CHAINHARNESS_K8S_DIR", "/var/lib/chainharness-k8s"))


def find_kube(name: str, root: Path | None = None) -> Path:
    """One of ``KUBE_BINARIES`` from the tools folder."""
    built = tools_dir(root) / "kubernetes" / KUBERNETES_VERSION / name
    if built.is_file() and os.access(built, os.X_OK):
        return built
    raise ToolNotFound(
        f"kubernetes {KUBERNETES_VERSION}'s {name} was not found at {built}. Install it with: "
        f"{INSTALL_COMMAND} kubernetes   (builds it from the Go module proxy, about 5 min; "
        "needs Go)"
    )


def _wrapper_go_mod(upstream: Path) -> str:
    # k8s.io/kubernetes replaces its 31 staging modules by folders inside its own tree,
    # which a module that requires it cannot see: pin each to the matching release.
    staging = [
        line.split("=>")[0].strip()
        for line in upstream.read_text().splitlines()
        if "=> ./staging/" in line
    ]
    minor = "v0" + KUBERNETES_VERSION[1:]
    pins = "\n".join(f"\t{module} => {module} {minor}" for module in staging)
    return (
        f"module chainharness.local/k8s-build\n\ngo 1.24.0\n\n"
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}\n\nreplace (\n{pins}\n)\n"
    )


def install_kubernetes(*, dest: Path | None = None) -> list[Path]:
    """Build ``KUBE_BINARIES`` into ``dest/kubernetes/<version>/`` unless they are there
    (about 4 min the first time, 15 s with Go's build cache)."""
    major, minor = KUBERNETES_VERSION.split(".")[:2]
    stamp = "k8s.io/component-base/version"
    return wrapper_build(
        f"k8s.io/kubernetes@v{KUBERNETES_VERSION}",
        (dest or tools_dir()) / "kubernetes" / KUBERNETES_VERSION,
        commands=KUBE_BINARIES,
        works=_reports_version,
        go_mod=lambda upstream: _wrapper_go_mod(upstream / "go.mod"),
        ldflags=(
            f"-X {stamp}.gitVersion=v{KUBERNETES_VERSION} -X {stamp}.gitMajor={major} "
            f"-X {stamp}.gitMinor={minor}"
        ),
        what=f"kubernetes {KUBERNETES_VERSION}",
    )


def _reports_version(binary: Path) -> bool:
    return _reports(binary, ["--version"], f"Kubernetes v{KUBERNETES_VERSION}")


class KubeCluster:
    """The cluster under ``state_dir()``: start, stop, and whether it answers."""

    def __init__(self, root: Path | None = None, *, tools: Path | None = None) -> None:
        self.root = root or state_dir()
        self.tools = tools
        self.bin = (tools or tools_dir()) / "kubernetes" / KUBERNETES_VERSION
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.containerd_sock = self.root / "containerd" / "containerd.sock"
        #: The admin kubeconfig (what ``--chain-kubeconfig`` takes).
        self.kubeconfig = self.root / "admin.kubeconfig"

    # -- start ------------------------------------------------------------------------------

    def start(self, images: Sequence[str] = (), timeout: float = 180.0) -> None:
        """Build what is missing, start every component, wait for the node, import
        ``images`` from the docker engine. Anything started is stopped again on failure."""
        for need in ("etcd", "containerd", "runc", "openssl", "ip", "gcc"):
            if shutil.which(need) is None:
                raise ToolNotFound(
                    f"{need} was not found: install Debian's etcd-server, containerd, runc, "
                    "openssl, iproute2, gcc and containernetworking-plugins (scripts/k8s.sh "
                    "installs the cluster's own)"
                )
        if not Path("/usr/lib/cni/bridge").exists():
            raise ToolNotFound("no CNI plugins in /usr/lib/cni: apt-get install "
                               "containernetworking-plugins")  # fmt: skip
        install_kubernetes(dest=self.tools)
        if self.answers():
            print(f"k8s: a cluster already answers ({self.kubeconfig})")
            return
        self.stop(quiet=True)  # the leftovers of a start that was killed half-way
        started = time.monotonic()
        try:
            self._layout()
            self._save_sysctls()
            self._bridge()
            self._spawn("etcd", self._etcd_argv())
            self._spawn(
                "containerd", ["containerd", "--config", str(self.root / "containerd.toml")]
            )
            self._wait(lambda: self._ctr("version").returncode == 0, "containerd", 30)
            self._import_pause()
            self._spawn("kube-apiserver", self._apiserver_argv())
            self._wait(self.answers, "kube-apiserver", 60)
            self._spawn("kube-controller-manager", self._controller_manager_argv())
            self._spawn("kube-scheduler", self._scheduler_argv())
            self._spawn("kubelet", self._kubelet_argv())
            self._wait(self._node_ready, "the node to be Ready", timeout)
            ready = time.monotonic() - started
            for image in images:
                self.import_image(image)
            # The node's status lists them once the kubelet next reports (up to 10 s):
            # the backend's image check reads that list.
            self._wait(lambda: self._node_lists(images), "the node to list the images", 60)
            print(
                f"k8s: node Ready in {ready:.1f}s; {len(images)} image(s) imported; "
                f"kubeconfig {self.kubeconfig}"
            )
        except BaseException:
            self.stop(quiet=True)
            raise

    def _layout(self) -> None:
        for sub in ("pki", "logs", "etcd", "containerd", "kubelet", "cni", "manifests"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._certificates()
        self._kubeconfigs()
        (self.root / "cni" / "10-chainharness.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "chainharness",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            # No NAT: pods talk to each other and to this host only.
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET}]],
                                "dataDir": str(self.root / "cni" / "ipam"),
                            },
                        },
                        {"type": "loopback"},
                    ],
                },
                indent=1,
            )
        )
        state = self.root / "containerd"
        (self.root / "containerd.toml").write_text(
            textwrap.dedent(
                f"""\
                version = 2
                root = "{state}/root"
                state = "{state}/state"
                [grpc]
                  address = "{self.containerd_sock}"
                [plugins."io.containerd.grpc.v1.cri"]
                  sandbox_image = "{PAUSE_IMAGE}"
                  # Root here may not lower a process's oom_score_adj: without this every
                  # sandbox fails with "can't get final child's PID from pipe".
                  restrict_oom_score_adj = true
                  [plugins."io.containerd.grpc.v1.cri".cni]
                    bin_dir = "/usr/lib/cni"
                    conf_dir = "{self.root}/cni"
                  [plugins."io.containerd.grpc.v1.cri".containerd]
                    snapshotter = "overlayfs"
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                      runtime_type = "io.containerd.runc.v2"
                      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                        SystemdCgroup = false
                        Root = "{state}/runc"
                """
            )
        )
        (self.root / "kubelet.yaml").write_text(
            textwrap.dedent(
                f"""\
                apiVersion: kubelet.config.k8s.io/v1beta1
                kind: KubeletConfiguration
                address: {NODE_IP}
                port: {KUBELET_PORT}
                readOnlyPort: 0
                healthzBindAddress: 127.0.0.1
                cgroupDriver: cgroupfs
                containerRuntimeEndpoint: unix://{self.containerd_sock}
                failSwapOn: false
                # Keeps its host iptables chains off: one of them drops traffic to
                # 127.0.0.0/8 that did not come from this host.
                makeIPTablesUtilChains: false
                evictionHard:
                  memory.available: "50Mi"
                  nodefs.available: "1%"
                  imagefs.available: "1%"
                imageGCHighThresholdPercent: 100
                imageGCLowThresholdPercent: 99
                authentication:
                  anonymous: {{enabled: false}}
                  webhook: {{enabled: false}}
                  x509: {{clientCAFile: {self.pki}/ca.crt}}
                authorization: {{mode: AlwaysAllow}}
                tlsCertFile: {self.pki}/kubelet.crt
                tlsPrivateKeyFile: {self.pki}/kubelet.key
                resolvConf: ""
                registerNode: true
                """
            )
        )

    def _bridge(self) -> None:
        # Made here, not by the CNI plugin at the first pod: the kubelet needs the node IP
        # before any pod runs. The plugin takes the bridge as it finds it.
        prefix = POD_SUBNET.split("/")[1]
        for argv in (
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.pki)

    def _cert(self, name: str, subject: str, *, sans: str = "", client: bool = False) -> None:
        self._openssl("genrsa", "-out", f"{name}.key", "2048")
        self._openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
        usage = "clientAuth" if client else "serverAuth,clientAuth"
        ext = f"extendedKeyUsage={usage}\n" + (f"subjectAltName={sans}\n" if sans else "")
        (self.pki / f"{name}.ext").write_text(ext)
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        )  # fmt: skip

    def _certificates(self) -> None:
        if (self.pki / "ca.crt").exists():
            return
        self._openssl("genrsa", "-out", "ca.key", "2048")
        self._openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=chainharness-k8s-ca",
            "-days", "30", "-out", "ca.crt",
        )  # fmt: skip
        first_service_ip = SERVICE_SUBNET.rsplit(".", 1)[0] + ".1"
        self._cert(
            "apiserver",
            "/CN=kube-apiserver",
            sans=f"IP:127.0.0.1,IP:{first_service_ip},DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default.svc",
        )
        self._cert("admin", "/O=system:masters/CN=chainharness-admin", client=True)
        node = socket.gethostname()
        self._cert("node", f"/O=system:nodes/CN=system:node:{node}", client=True)
        self._cert("kubelet", f"/CN={node}", sans=f"IP:{NODE_IP},DNS:{node}")
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def _kubeconfigs(self) -> None:
        server = f"https://127.0.0.1:{APISERVER_PORT}"
        for name, cert in (("admin", "admin"), ("kubelet", "node")):
            path = self.kubeconfig if name == "admin" else self.root / f"{name}.kubeconfig"
            path.write_text(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [
                            {
                                "name": "chainharness",
                                "cluster": {
                                    "server": server,
                                    "certificate-authority": str(self.pki / "ca.crt"),
                                },
                            }
                        ],
                        "users": [
                            {
                                "name": name,
                                "user": {
                                    "client-certificate": str(self.pki / f"{cert}.crt"),
                                    "client-key": str(self.pki / f"{cert}.key"),
                                },
                            }
                        ],
                        "contexts": [
                            {
                                "name": "chainharness",
                                "context": {"cluster": "chainharness", "user": name},
                            }
                        ],
                        "current-context": "chainharness",
                    },
                    indent=1,
                )
            )
            os.chmod(path, 0o600)

    def _etcd_argv(self) -> list[str]:
        return [
            "etcd",
            "--name", "chainharness",
            "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-cluster", f"chainharness=http://127.0.0.1:{ETCD_PEER_PORT}",
        ]  # fmt: skip

    def _apiserver_argv(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{ETCD_PORT}",
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            # The "kubernetes" service may not point at loopback, and no pod here needs it.
            "--endpoint-reconciler-type", "none",
            "--secure-port", str(APISERVER_PORT),
            "--service-cluster-ip-range", SERVICE_SUBNET,
            "--client-ca-file", f"{pki}/ca.crt",
            "--tls-cert-file", f"{pki}/apiserver.crt",
            "--tls-private-key-file", f"{pki}/apiserver.key",
            "--kubelet-client-certificate", f"{pki}/admin.crt",
            "--kubelet-client-key", f"{pki}/admin.key",
            "--kubelet-preferred-address-types", "InternalIP",
            "--service-account-key-file", f"{pki}/sa.pub",
            "--service-account-signing-key-file", f"{pki}/sa.key",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--authorization-mode", "Node,RBAC",
            "--allow-privileged",
        ]  # fmt: skip

    def _controller_manager_argv(self) -> list[str]:
        return [
            str(self.bin / "kube-controller-manager"),
            "--kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1",
            "--service-account-private-key-file", f"{self.pki}/sa.key",
            "--root-ca-file", f"{self.pki}/ca.crt",
            "--use-service-account-credentials",
            "--leader-elect=false",
        ]  # fmt: skip

    def _scheduler_argv(self) -> list[str]:
        return [
            str(self.bin / "kube-scheduler"),
            "--kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1",
            "--leader-elect=false",
        ]  # fmt: skip

    def _kubelet_argv(self) -> list[str]:
        return [
            str(self.bin / "kubelet"),
            "--config", str(self.root / "kubelet.yaml"),
            "--kubeconfig", str(self.root / "kubelet.kubeconfig"),
            "--root-dir", str(self.root / "kubelet"),
            "--node-ip", NODE_IP,
        ]  # fmt: skip

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            children = [
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, RUN_MARKER: CLUSTER_MARKER},
                    start_new_session=True,
                )
            ]
        # The cluster outlives this process: ``stop`` finds its processes by the marker.
        hand_over(children)

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        logs = "\n".join(
            f"--- {p.name} (last 15 lines)\n"
            + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted(self.logs.glob("*.log"))
        )
        raise ChainHarnessError(f"k8s: {what} did not come up within {timeout:g}s\n{logs}")

    def _ctr(self, *args: str, stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ctr", "--address", str(self.containerd_sock), "--namespace", "k8s.io", *args],
            capture_output=True,
            stdin=stdin,
            check=False,
        )

    def _api(self, path: str) -> bytes | None:
        """GET ``path`` from the API server with the admin certificate; None unless 200."""
        import ssl
        import urllib.error
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{APISERVER_PORT}{path}", context=context, timeout=5
            ) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the connection
            return None
        except OSError:
            return None

    def answers(self) -> bool:
        return (self.pki / "ca.crt").exists() and self._api("/readyz") is not None

    def _node_ready(self) -> bool:
        nodes = json.loads(self._api("/api/v1/nodes") or b"{}")
        for node in nodes.get("items", []):
            for condition in node.get("status", {}).get("conditions", []):
                if condition.get("type") == "Ready" and condition.get("status") == "True":
                    return True
        return False

    def _node_lists(self, images: Sequence[str]) -> bool:
        from .._kube import image_names

        nodes = json.loads(self._api("/api/v1/nodes") or b"{}")
        held = {
            name
            for node in nodes.get("items", [])
            for image in node.get("status", {}).get("images", [])
            for name in image.get("names", [])
        }
        return all(image_names(image) & held for image in images)

    def _import_pause(self) -> None:
        """The sandbox image: a static program that sleeps until it is signalled."""
        if self._ctr("images", "check", f"name==docker.io/{PAUSE_IMAGE}").stdout.count(b"\n") > 1:
            return
        build = self.root / "pause"
        build.mkdir(exist_ok=True)
        (build / "pause.c").write_text(
            textwrap.dedent(
                """\
                #include <signal.h>
                #include <stdlib.h>
                #include <unistd.h>
                static void stop(int sig) { (void)sig; _exit(0); }
                int main(void) {
                    signal(SIGINT, stop);
                    signal(SIGTERM, stop);
                    for (;;) pause();
                }
                """
            )
        )
        subprocess.run(
            ["gcc", "-static", "-Os", "-o", str(build / "pause"), str(build / "pause.c")],
            check=True,
            capture_output=True,
        )
        # An image tarball in docker's save format, by hand: one layer with /pause.
        subprocess.run(["tar", "-C", str(build), "-cf", str(build / "layer.tar"), "pause"],
                       check=True)  # fmt: skip
        import hashlib

        layer = (build / "layer.tar").read_bytes()
        diff = "sha256:" + hashlib.sha256(layer).hexdigest()
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Entrypoint": ["/pause"]},
                "rootfs": {"type": "layers", "diff_ids": [diff]},
            }
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        (build / config_name).write_bytes(config)
        manifest = [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]
        (build / "manifest.json").write_text(json.dumps(manifest))
        subprocess.run(
            ["tar", "-C", str(build), "-cf", str(build / "image.tar"),
             "manifest.json", config_name, "layer.tar"],
            check=True,
        )  # fmt: skip
        with open(build / "image.tar", "rb") as image:
            done = self._ctr("images", "import", "-", stdin=image.fileno())
        if done.returncode != 0:
            raise ChainHarnessError(f"k8s: importing the pause image failed: {done.stderr!r}")

    def import_image(self, image: str) -> None:
        """Copy ``image`` from the docker engine into the cluster's runtime."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        assert save.stdout is not None
        done = self._ctr("images", "import", "--all-platforms", "-", stdin=save.stdout.fileno())
        save.stdout.close()
        if save.wait() != 0 or done.returncode != 0:
            raise ChainHarnessError(
                f"k8s: importing {image} from docker failed: {done.stderr.decode()[-500:]}"
            )

    # -- sysctls ----------------------------------------------------------------------------

    def _save_sysctls(self) -> None:
        saved = self.root / "sysctls.json"
        if saved.exists():  # a start after a crash: the first saved values are the host's
            return
        values = {
            name: Path("/proc/sys", *name.split(".")).read_text().strip()
            for name in KUBELET_SYSCTLS
        }
        saved.write_text(json.dumps(values))

    def _restore_sysctls(self) -> None:
        saved = self.root / "sysctls.json"
        if not saved.exists():
            return
        for name, value in json.loads(saved.read_text()).items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", *name.split(".")).write_text(value)
        saved.unlink()

    # -- stop -------------------------------------------------------------------------------

    def stop(self, *, quiet: bool = False) -> None:
        """Stop every process, pod and mount of the cluster; remove its bridge, network
        namespaces and state; put back the sysctls. Safe to call when nothing runs."""
        # The kubelet first, so nothing starts pods again; then the pods; then the rest
        # (containerd's shims carry the marker too: containerd started them).
        kill_pids([p for p in find_marked(CLUSTER_MARKER) if _comm(p) == "kubelet"])
        self._kill_pods()
        kill_pids(find_marked(CLUSTER_MARKER))
        self._remove_pod_cgroups()
        self._unmount_under(self.root)
        for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").exists() else []:
            if self._netns_is_ours(netns):
                subprocess.run(["ip", "netns", "delete", netns.name], check=False,
                               capture_output=True)  # fmt: skip
        subprocess.run(["ip", "link", "delete", BRIDGE], check=False, capture_output=True)
        self._restore_sysctls()
        shutil.rmtree(self.root, ignore_errors=True)
        if not quiet:
            print(f"k8s: stopped; removed {self.root}")

    def _kill_pods(self) -> None:
        # A pod's processes carry no marker (runc gives them the image's environment):
        # kill each task through containerd, then whatever is left in the pods' cgroups.
        if self.containerd_sock.exists():
            listed = self._ctr("tasks", "ls", "-q")
            for task in listed.stdout.decode().split():
                self._ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task)
        kill_pids(
            {
                int(pid)
                for procs in _pod_cgroups("pids")
                for pid in _read(procs / "cgroup.procs").split()
            }
        )

    def _remove_pod_cgroups(self) -> None:
        for controller in Path("/sys/fs/cgroup").iterdir():
            # Deepest first: a cgroup goes only once it has no children.
            for cgroup in sorted(_pod_cgroups(controller.name), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()

    def _netns_is_ours(self, netns: Path) -> bool:
        # containerd names its pods' namespaces cni-<uuid> under /run/netns; ours hold an
        # address in POD_SUBNET. Anything else there is someone else's and stays.
        out = subprocess.run(
            ["ip", "netns", "exec", netns.name, "ip", "-4", "-o", "addr"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        subnet = POD_SUBNET.rsplit(".", 1)[0] + "."
        return subnet in out.stdout

    def _unmount_under(self, root: Path) -> None:
        mounts = []
        with open("/proc/self/mountinfo") as info:
            for line in info:
                point = line.split()[4]
                if point == str(root) or point.startswith(f"{root}/"):
                    mounts.append(point)
        # Deepest first; the kubelet bind-mounts its root dir onto itself.
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def status(self) -> str:
        if not self.answers():
            return "k8s: no cluster answers"
        return f"k8s: up, node Ready: {self._node_ready()}; kubeconfig {self.kubeconfig}"


def _comm(pid: int) -> str:
    return _read(Path(f"/proc/{pid}/comm")).strip()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _pod_cgroups(controller: str) -> list[Path]:
    """The kubelet's cgroups (``kubepods`` and below, cgroupfs driver) of one controller."""
    top = Path("/sys/fs/cgroup") / controller / "kubepods"
    if not top.is_dir():
        return []
    return [top, *(p for p in top.rglob("*") if p.is_dir())]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_chainharness.tools.k8s")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="build (once) and start the cluster")
    start.add_argument("images", nargs="*", help="docker images to import into the cluster")
    sub.add_parser("stop", help="stop the cluster and remove everything it made")
    sub.add_parser("status", help="whether the cluster answers")
    args = parser.parse_args(argv)
    cluster = KubeCluster()
    try:
        if args.command == "start":
            cluster.start(args.images)
        elif args.command == "stop":
            cluster.stop()
        else:
            print(cluster.status())
    except ChainHarnessError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
