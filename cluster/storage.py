"""The storage URI: one root for data shards, checkpoints and artifacts.

A local path by default, ``s3://…`` or ``gs://…`` on clusters; pyarrow's filesystem layer
resolves it, so the same code reads and writes all of them.
"""

from __future__ import annotations

import os
import tempfile

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for ``uri`` (a plain path means local)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``uri``, creating parent folders; readers never see half a file.

    On a local disk the bytes go to a temporary sibling first and are moved into place
    (an atomic rename); object stores publish an object only when its upload completes.

    Args:
        uri: Where to write.
        data: The whole file.
        private: Readable by the owner only (mode 0600 on a local disk: secrets such as
            the API key store). Object stores have no file modes: there the bucket's
            access policy decides, as for everything else on the storage URI.
    """
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if private and isinstance(fs, pafs.LocalFileSystem):
        return _write_private(path, data)
    tmp = f"{path}.tmp-writing"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def _write_private(path: str, data: bytes) -> None:
    # mkstemp creates the file 0600 from the start: a chmod after writing would leave a
    # window in which the secret is readable by others. The rename keeps that mode, and
    # replaces a file an older version wrote 0644.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-writing-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound
