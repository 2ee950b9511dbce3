#!/usr/bin/env python3
"""A one-binary container image as a docker-save archive (`ctr images import` reads it).

usage: oci_image.py OUT.tar NAME:TAG BINARY PATH_IN_IMAGE

For the local node's own images (the pod sandbox, CoreDNS): static binaries, so the
image holds the binary and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def archive(out: Path, reference: str, binary: Path, path_in_image: str) -> None:
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        entry = layer.gettarinfo(str(binary), arcname=path_in_image.lstrip("/"))
        entry.mode, entry.uid, entry.gid, entry.uname, entry.gname = 0o755, 0, 0, "", ""
        with binary.open("rb") as content:
            layer.addfile(entry, content)
    layer_bytes = layer_buffer.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [path_in_image], "WorkingDir": "/"},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()],
        },
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": ["layer.tar"]}]
    with tarfile.open(out, "w") as image:
        for name, data in (
            (config_name, config_bytes),
            ("layer.tar", layer_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            image.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    out, reference, binary, path_in_image = sys.argv[1:5]
    archive(Path(out), reference, Path(binary), path_in_image)
