"""Container images without a registry: ``chainharness images build``.

Machines that reach no container registry still get every image the docker backend needs:

    chainharness/base:bookworm       Debian minbase (debootstrap from the apt mirror + import)
    chainharness/geth:v1.13.15       base + the geth built by ``tools install geth``
    chainharness/geth:v1.13.14       (every installed geth version gets a tag)
    chainharness/anvil:v1.7.1        base + anvil's native binary from npm (when installed)
    chainharness/mosquitto:2         base + Debian's mosquitto (the bus's broker)
    chainharness/python:3.11         base + Debian's python3 (small services, the example indexer)
    chainharness/geth-pos:v1.17.10-prysm-v7.0.0
                                     python + geth 1.17 + prysm's beacon node, validator and
                                     prysmctl (``tools install geth-pos``) + the node supervisor
    chainharness/geth-pos:v1.17.9-prysm-v7.0.0
                                     (every installed geth v1.14+ gets one: upgrades swap it)

Teams with a registry point the image options at real images instead
(``ethereum/client-go:v1.13.15``, ``eclipse-mosquitto:2``); both kinds work.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from ._errors import ToolNotFound
from .tools import (
    ANVIL_VERSION,
    POS_GETH_VERSION,
    PRYSM_BINARIES,
    PRYSM_VERSION,
    find_anvil,
    find_geth,
    find_prysm,
    geth_versions_installed,
    version_key,
)

__all__ = [
    "ANVIL_IMAGE",
    "BASE_IMAGE",
    "BUILD_COMMAND",
    "GETH_IMAGE",
    "GETH_POS_IMAGE",
    "IMAGE_GROUPS",
    "MOSQUITTO_IMAGE",
    "POS_NODE_IN_IMAGE",
    "PYTHON_IMAGE",
    "build_images",
    "geth_image",
    "geth_pos_image",
    "image_for_version",
]

BUILD_COMMAND = "chainharness images build"
BASE_IMAGE = "chainharness/base:bookworm"
GETH_IMAGE = "chainharness/geth"
ANVIL_IMAGE = f"chainharness/anvil:v{ANVIL_VERSION}"
MOSQUITTO_IMAGE = "chainharness/mosquitto:2"
PYTHON_IMAGE = "chainharness/python:3.11"


def geth_pos_image(version: str) -> str:
    """The geth-pos image of one geth version (prysm is the same in all of them)."""
    return f"chainharness/geth-pos:v{version.lstrip('v')}-prysm-v{PRYSM_VERSION}"


GETH_POS_IMAGE = geth_pos_image(POS_GETH_VERSION)
#: Where the geth-pos image keeps the node supervisor (``clients/pos_node.py``, standard
#: library only), run by the image's python3.
POS_NODE_IN_IMAGE = "/usr/local/lib/chainharness/pos_node.py"
SUITE = "bookworm"
#: What ``build_images(only=...)`` and ``images build --only`` choose from.
IMAGE_GROUPS = ("os", "geth", "anvil", "geth-pos")


def geth_image(version: str) -> str:
    return f"{GETH_IMAGE}:v{version.lstrip('v')}"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (the only one it may reach)."""
    candidates: list[str] = []
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = source.read_text()
        except OSError:
            continue
        candidates += re.findall(r"(?:^deb|URIs:)\s+(\S+/debian)/?\s*$", text, re.MULTILINE)
        candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+\S+\s", text, re.M)
    return candidates[0] if candidates else "http://deb.debian.org/debian"


def _import_rootfs(rootfs: Path, tag: str, changes: Sequence[str]) -> None:
    from ._docker import docker_client

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(rootfs), arcname=".")
    repository, _, version = tag.rpartition(":")
    client = docker_client()
    try:
        client.api.import_image_from_data(
            buffer.getvalue(), repository=repository, tag=version, changes=list(changes)
        )
    finally:
        client.close()


def _chroot_install(rootfs: Path, packages: Sequence[str]) -> None:
    # The chroot resolves the mirror with the host's resolver; the image keeps none.
    resolv = rootfs / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            ["apt-get", "clean"],
        ):
            subprocess.run(["chroot", str(rootfs), *argv], check=True, env=env, capture_output=True)
    except subprocess.CalledProcessError as exc:
        out = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        raise ToolNotFound(
            f"installing {' '.join(packages)} into the image failed:\n{out}"
        ) from exc
    finally:
        resolv.unlink(missing_ok=True)
    shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)


def _debootstrap(rootfs: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise ToolNotFound(
            "debootstrap is needed to build the base image: apt-get install debootstrap "
            "(scripts/docker.sh installs it)"
        )
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", SUITE, str(rootfs), apt_mirror()],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ToolNotFound(f"debootstrap failed:\n{tail}")


def _build_from_base(
    tag: str, files: dict[str, Path], entrypoint: list[str], base: str = BASE_IMAGE
) -> None:
    """An image of ``base`` plus ``files`` (destination → host path)."""
    from ._docker import docker_client

    with tempfile.TemporaryDirectory(prefix="chainharness-image-") as tmp:
        context = Path(tmp)
        lines = [f"FROM {base}"]
        for index, (destination, source) in enumerate(files.items()):
            shutil.copy2(source, context / f"f{index}")
            lines.append(f"COPY f{index} {destination}")
        lines.append(f"ENTRYPOINT {entrypoint!r}".replace("'", '"'))
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        client = docker_client()
        try:
            client.images.build(path=str(context), tag=tag, rm=True, pull=False)
        finally:
            client.close()


def build_images(
    *,
    root: Path | None = None,
    force: bool = False,
    only: Collection[str] = IMAGE_GROUPS,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Build every image of the groups ``only`` (``os``, ``geth``, ``anvil``,
    ``geth-pos``) that is missing (all of them with ``force``); returns the tags built.
    The client groups are skipped, saying so, when their tools are not installed; ``geth``
    is the default client's, so its absence is an error."""
    unknown = set(only) - set(IMAGE_GROUPS)
    if unknown:
        raise ValueError(f"unknown image group(s) {sorted(unknown)}; known: {IMAGE_GROUPS}")
    from ._docker import image_exists

    built: list[str] = []
    started = time.perf_counter()

    def done(tag: str) -> None:
        built.append(tag)
        say(f"built {tag} ({time.perf_counter() - started:.1f}s)")

    wanted_os = [BASE_IMAGE, MOSQUITTO_IMAGE, PYTHON_IMAGE]
    if "os" in only and (force or not all(image_exists(tag) for tag in wanted_os)):
        with tempfile.TemporaryDirectory(prefix="chainharness-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            say(f"debootstrap {SUITE} from {apt_mirror()} ...")
            _debootstrap(rootfs)
            shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
            _import_rootfs(rootfs, BASE_IMAGE, ['CMD ["bash"]'])
            done(BASE_IMAGE)
            # Each image adds to the one before: mosquitto, then python beside it.
            _chroot_install(rootfs, ["mosquitto"])
            _import_rootfs(rootfs, MOSQUITTO_IMAGE, ['CMD ["mosquitto"]'])
            done(MOSQUITTO_IMAGE)
            _chroot_install(rootfs, ["python3"])
            _import_rootfs(rootfs, PYTHON_IMAGE, ['CMD ["python3"]'])
            done(PYTHON_IMAGE)

    if not image_exists(BASE_IMAGE):
        raise ToolNotFound(f"the base image {BASE_IMAGE} is missing: {BUILD_COMMAND}")
    if "geth" in only:
        _build_geth_images(root, force, done)
    if "anvil" in only:
        _build_anvil_image(root, force, done, say)
    if "geth-pos" in only:
        _build_geth_pos_image(root, force, done, say)
    return built


def _clique_geths(root: Path | None) -> dict[str, Path]:
    """The installed geths the geth image is for: the Clique ones (v1.14+ refuses Clique;
    geth-pos's geth is in the geth-pos image)."""
    return {v: b for v, b in geth_versions_installed(root).items() if version_key(v) < (1, 14)}


def _build_geth_images(root: Path | None, force: bool, done: Callable[[str], None]) -> None:
    from ._docker import image_exists

    geths = _clique_geths(root)
    if not geths:
        raise ToolNotFound(
            "no geth is installed to put into an image: "
            "python -m pytest_chainharness.tools install geth"
        )
    for version, binary in geths.items():
        tag = geth_image(version)
        if force or not image_exists(tag):
            _build_from_base(tag, {"/usr/local/bin/geth": binary}, ["geth"])
            done(tag)


def _build_anvil_image(
    root: Path | None, force: bool, done: Callable[[str], None], say: Callable[[str], None]
) -> None:
    from ._docker import image_exists

    try:
        anvil = find_anvil(root=root)
    except ToolNotFound as exc:
        say(f"no anvil image: {exc}")
        return
    if not force and image_exists(ANVIL_IMAGE):
        return
    # find_anvil gives the native binary (never npm's node launcher, which the image
    # could not run without node).
    _build_from_base(ANVIL_IMAGE, {"/usr/local/bin/anvil": anvil}, ["anvil"])
    done(ANVIL_IMAGE)


def _pos_geths(root: Path | None) -> dict[str, Path]:
    """The installed geths a geth-pos image is for: v1.14+ (proof of stake only)."""
    return {v: b for v, b in geth_versions_installed(root).items() if version_key(v) >= (1, 14)}


def _build_geth_pos_image(
    root: Path | None, force: bool, done: Callable[[str], None], say: Callable[[str], None]
) -> None:
    from ._docker import image_exists

    try:
        find_geth(version=POS_GETH_VERSION, root=root)
        prysm = {f"/usr/local/bin/{name}": find_prysm(name, root) for name in PRYSM_BINARIES}
    except ToolNotFound as exc:
        say(f"no geth-pos image: {exc}")
        return
    # One image per installed geth: upgrades swap the image (the previous geth included).
    wanted = {
        geth_pos_image(version): binary
        for version, binary in _pos_geths(root).items()
        if force or not image_exists(geth_pos_image(version))
    }
    if not wanted:
        return
    if not image_exists(PYTHON_IMAGE):
        raise ToolNotFound(f"the image {PYTHON_IMAGE} is missing: {BUILD_COMMAND} --only os")
    for tag, geth in wanted.items():
        # The supervisor runs a node's three parts as one process tree, as on the host.
        files = {"/usr/local/bin/geth": geth, **prysm}
        files[POS_NODE_IN_IMAGE] = Path(__file__).parent / "clients" / "pos_node.py"
        _build_from_base(tag, files, ["python3", POS_NODE_IN_IMAGE], base=PYTHON_IMAGE)
        done(tag)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chainharness images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build every missing image (no registry needed)")
    build.add_argument("--force", action="store_true", help="rebuild images that exist")
    build.add_argument(
        "--only",
        action="append",
        choices=IMAGE_GROUPS,
        help="build only this group (repeatable; default: all)",
    )
    sub.add_parser("list", help="show which images exist")
    args = parser.parse_args(argv)
    from ._docker import image_exists

    if args.command == "list":
        tags = [BASE_IMAGE, MOSQUITTO_IMAGE, PYTHON_IMAGE, ANVIL_IMAGE, GETH_POS_IMAGE]
        tags += [geth_image(v) for v in _clique_geths(Path.cwd())]
        tags += [geth_pos_image(v) for v in _pos_geths(Path.cwd()) if v != POS_GETH_VERSION]
        for tag in tags:
            print(f"{tag:44} {'present' if image_exists(tag) else 'missing'}")
        return 0
    try:
        built = build_images(root=Path.cwd(), force=args.force, only=args.only or IMAGE_GROUPS)
    except ToolNotFound as exc:
        print(f"chainharness images: {exc}")
        return 1
    print(f"{len(built)} image(s) built" if built else "every image is already present")
    return 0


def image_for_version(image: str, version: str) -> str:
    """``version`` as an image: a full reference is kept; a bare version retags ``image``.

    ``1.13.14`` with ``chainharness/geth:v1.13.15`` gives ``chainharness/geth:v1.13.14``,
    and with ``ethereum/client-go:v1.13.15`` gives ``ethereum/client-go:v1.13.14``. What
    follows the version in the tag stays: ``1.17.9`` with
    ``chainharness/geth-pos:v1.17.10-prysm-v7.0.0`` gives
    ``chainharness/geth-pos:v1.17.9-prysm-v7.0.0`` (geth swapped, prysm kept).
    """
    if ":" in version or "/" in version:
        return version
    repository, tag = image, ""
    if ":" in image.rsplit("/", 1)[-1]:
        repository, tag = image.rsplit(":", 1)
    rest = _TAG_VERSION.sub("", tag, count=1) if _TAG_VERSION.match(tag) else ""
    return f"{repository}:v{version.lstrip('v')}{rest}"


#: The version a tag starts with (``v1.17.10`` of ``v1.17.10-prysm-v7.0.0``).
_TAG_VERSION = re.compile(r"^v?\d+(?:\.\d+)*")
