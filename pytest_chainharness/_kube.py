"""A Kubernetes cluster as the harness sees it: a client from a kubeconfig, the checks a
run needs before anything starts, and removal of a run's namespace by label.

Every namespace the harness makes carries ``LABEL_MANAGED`` and ``LABEL_RUN`` (the run
id) and the ``ANNOTATION_OWNER`` annotation (``host:pid`` of the process that owns the
run, as on docker), so a sweep finds a run by its labels and never touches a namespace it
did not make; everything of a run (its pods) lives in its namespace.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ._errors import ChainHarnessError, ToolNotFound
from ._proc import owner_gone
from ._proc import owner_tag as owner_annotation

__all__ = [
    "ANNOTATION_OWNER",
    "LABEL_MANAGED",
    "LABEL_RUN",
    "NEEDED_RIGHTS",
    "Cluster",
    "owner_annotation",
]

LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "chainharness"
LABEL_RUN = "chainharness.dev/run"
LABEL_ROLE = "chainharness.dev/role"
ANNOTATION_OWNER = "chainharness.dev/owner"

#: What a run does with the API: (verb, resource, subresource), checked with a
#: SelfSubjectAccessReview before anything is made, so a missing right is one clear
#: error and not a half-made run.
NEEDED_RIGHTS: tuple[tuple[str, str, str], ...] = (
    ("create", "namespaces", ""),
    ("get", "namespaces", ""),
    ("delete", "namespaces", ""),
    ("create", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("patch", "pods", ""),
    ("delete", "pods", ""),
    ("get", "pods", "log"),
)

#: The images a node's status lists at the most (the kubelet's nodeStatusMaxImages).
MAX_LISTED = 50
#: The harness's own images (``chainharness images build``): in no registry.
LOCAL_REPOSITORY = "chainharness/"

#: Seconds a call may take before the cluster counts as not answering.
CALL_TIMEOUT = 10.0
#: How long a run's namespace may take to go once deleted.
REMOVAL_TIMEOUT = 90.0


def kubeconfig_place(kubeconfig: str | None) -> str:
    """How a message names the kubeconfig in use."""
    if kubeconfig:
        return kubeconfig
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def image_names(image: str) -> set[str]:
    """The names a node of the cluster may list ``image`` under (a local ``name:tag`` is
    ``docker.io/library/name:tag`` or ``docker.io/name:tag`` there)."""
    ref = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return {ref}
    if "/" not in ref:
        return {ref, f"docker.io/library/{ref}"}
    return {ref, f"docker.io/{ref}"}


@dataclass
class Cluster:
    """One API client for one kubeconfig; ``close`` it.

    Request bodies are plain dicts, never the client's model classes: a process that
    imports the client again (pytester drops the modules a test imported) gets new model
    classes, which the API methods' validators refuse."""

    kubeconfig: str | None
    api: k8s.ApiClient

    @classmethod
    def connect(cls, kubeconfig: str | None) -> Cluster:
        """A client for ``kubeconfig`` (None: ``$KUBECONFIG``, else ``~/.kube/config``);
        ``ChainHarnessError`` when it does not load."""
        place = kubeconfig_place(kubeconfig)
        if not Path(place).is_file():
            raise ChainHarnessError(
                f"no kubeconfig at {place}: name one with --chain-kubeconfig (on this "
                "machine, `bash scripts/k8s.sh start` starts a cluster and writes one)"
            )
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=place, client_configuration=configuration
            )
        except Exception as exc:  # ConfigException, YAML errors, missing keys or files
            raise ChainHarnessError(f"the kubeconfig {place} cannot be used: {exc}") from None
        # One try per call: a cluster that does not answer is an error now, not after
        # urllib3's three retries.
        configuration.retries = 0
        return cls(kubeconfig, k8s.ApiClient(configuration))

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def check_answers(self) -> str:
        """The cluster's version; ``ChainHarnessError`` when nothing answers or the
        credentials are refused."""
        try:
            info = k8s.VersionApi(self.api).get_code(_request_timeout=CALL_TIMEOUT)
        except ApiException as exc:
            if exc.status in (401, 403):
                raise ChainHarnessError(
                    f"the cluster at {self.host} refused the credentials of the kubeconfig "
                    f"{kubeconfig_place(self.kubeconfig)}: {exc.status} {exc.reason}"
                ) from None
            raise
        except (HTTPError, OSError) as exc:
            raise ChainHarnessError(
                f"no Kubernetes cluster answers at {self.host} (kubeconfig "
                f"{kubeconfig_place(self.kubeconfig)}): {type(exc).__name__}: {exc}. On "
                "this machine `bash scripts/k8s.sh start` starts one"
            ) from None
        return str(info.git_version)

    def check_rights(self, namespace: str) -> None:
        """``ChainHarnessError`` naming the first verb and resource the kubeconfig's user
        may not use in ``namespace``."""
        authz = k8s.AuthorizationV1Api(self.api)
        for verb, resource, sub in NEEDED_RIGHTS:
            review: Any = {
                "spec": {
                    "resourceAttributes": {
                        "verb": verb,
                        "resource": resource,
                        "subresource": sub or None,
                        "namespace": None if resource == "namespaces" else namespace,
                    }
                }
            }
            answer = authz.create_self_subject_access_review(review, _request_timeout=CALL_TIMEOUT)
            if answer.status is None or not answer.status.allowed:
                what = f"{resource}/{sub}" if sub else resource
                where = "" if resource == "namespaces" else f" in namespace {namespace}"
                raise ChainHarnessError(
                    f"the kubeconfig's user may not {verb} {what}{where} (RBAC, cluster "
                    f"{self.host}); the kubernetes backend needs: "
                    + ", ".join(f"{v} {r}{'/' + s if s else ''}" for v, r, s in NEEDED_RIGHTS)
                )

    def check_image(self, image: str, what: str) -> None:
        """``ToolNotFound`` when ``image`` is one of the harness's local images and no node
        of the cluster has it: such an image is in no registry, so a pod of it would never
        start. Any other image a node lacks is pulled by the kubelet when its pod starts
        (a failed pull is an error naming it then). A node lists at most ``MAX_LISTED``
        images: past that, its list says nothing about the others."""
        wanted = image_names(image)
        complete = True
        for node in self.core.list_node(_request_timeout=CALL_TIMEOUT).items:
            held = (node.status.images if node.status else None) or []
            if any(wanted & set(entry.names or []) for entry in held):
                return
            complete = complete and len(held) < MAX_LISTED
        if complete and image.startswith(LOCAL_REPOSITORY):
            raise ToolNotFound(
                f"{what} {image} is not on any node of the cluster at {self.host}, and no "
                "registry has it (a local image). `bash scripts/k8s.sh start` imports the "
                "harness's images from the docker engine (build them first: chainharness "
                f"images build); `bash scripts/k8s.sh start {image}` imports one more"
            )

    def namespace(self, name: str) -> k8s.V1Namespace | None:
        try:
            return self.core.read_namespace(name, _request_timeout=CALL_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_namespace(self, name: str, run_id: str, owner: str) -> None:
        """Make the run's namespace; ``ChainHarnessError`` when one of that name exists
        and is not this run's."""
        body: Any = {
            "metadata": {
                "name": name,
                "labels": {LABEL_MANAGED: MANAGED_BY, LABEL_RUN: run_id},
                "annotations": {ANNOTATION_OWNER: owner},
            }
        }
        try:
            self.core.create_namespace(body, _request_timeout=CALL_TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.check_namespace_free(name, run_id)

    def check_namespace_free(self, name: str, run_id: str) -> None:
        """``ChainHarnessError`` when namespace ``name`` exists and is not this run's."""
        found = self.namespace(name)
        if found is not None:
            labels = _labels(found)
            if labels.get(LABEL_RUN) == run_id:
                return
            whose = (
                f"chainharness run {labels.get(LABEL_RUN)}"
                if labels.get(LABEL_MANAGED) == MANAGED_BY
                else "not made by chainharness"
            )
            raise ChainHarnessError(
                f"--chain-namespace={name}: the namespace exists and is not this run's "
                f"({whose}); name another, or leave the option out for one per run"
            ) from None

    def runs(self) -> dict[str, tuple[str, str]]:
        """Run id → (namespace, owner) for every namespace the harness made."""
        found = self.core.list_namespace(
            label_selector=f"{LABEL_MANAGED}={MANAGED_BY}", _request_timeout=CALL_TIMEOUT
        )
        runs = {}
        for ns in found.items:
            meta = ns.metadata or k8s.V1ObjectMeta()
            run_id = (meta.labels or {}).get(LABEL_RUN)
            if run_id and meta.name:
                runs[run_id] = (meta.name, (meta.annotations or {}).get(ANNOTATION_OWNER, ""))
        return runs

    def remove_namespace(self, name: str, run_id: str, *, wait: bool = True) -> bool:
        """Delete the run's namespace (only if it carries ``run_id``) and, with ``wait``,
        wait until it is gone; whether there was one."""
        if _labels(self.namespace(name)).get(LABEL_RUN) != run_id:
            return False
        core = self.core
        # Its pods first, at once: the namespace's own deletion waits on each pod's
        # grace period, and the nodes are gone already (the provider killed them).
        core.delete_collection_namespaced_pod(
            name, grace_period_seconds=0, _request_timeout=CALL_TIMEOUT
        )
        try:
            core.delete_namespace(name, grace_period_seconds=0, _request_timeout=CALL_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
        deadline = time.monotonic() + REMOVAL_TIMEOUT
        while wait and self.namespace(name) is not None:
            if time.monotonic() > deadline:
                raise ChainHarnessError(
                    f"namespace {name} of run {run_id} is still there {REMOVAL_TIMEOUT:g}s "
                    "after its deletion"
                )
            time.sleep(0.25)
        return True

    def sweep_stale(self) -> list[str]:
        """Remove the namespaces of runs whose owner on this host is gone; their ids."""
        swept = []
        for run_id, (namespace, owner) in self.runs().items():
            if owner_gone(owner):
                self.remove_namespace(namespace, run_id)
                swept.append(run_id)
        return swept


def _labels(found: Any) -> dict[str, str]:
    """An API object's labels ({} for None or an object without any)."""
    meta = getattr(found, "metadata", None)
    return dict(getattr(meta, "labels", None) or {})
