"""Fetch single files from the Hugging Face Hub into a local folder, resumable across runs.

What this module does: `hub_download(repo_id, filename, dest_dir)` puts `dest_dir/filename` on disk. It
streams into `<name>.part` with a progress bar and keeps that file when the process dies or the connection
stays down, so the next call continues with a Range request instead of starting over. A `<name>.part.json`
sidecar records the Hub's ETag and size for the partial file; when either changed, the partial file is
discarded. The finished file is size-checked against the Hub's metadata and only then renamed to its final
name, so a file under the final name is always complete.

Why not `huggingface_hub.hf_hub_download`: since 1.x it downloads into a per-process temporary file and
deletes it on failure, so a killed process loses everything it fetched. We still use huggingface_hub for what
it does well: the URL (`hf_hub_url`), auth headers, metadata (`get_hf_file_metadata`) and the streaming GET
with in-call retries (`file_download.http_get`, which resumes with a Range request when a connection drops).

What it leaves to others: which files to fetch, local-copy fallbacks and user-facing hints (tinylib.stories,
tinylib.interop.tinyllamas), and the Hub's own cache layout (files land exactly at `dest_dir/filename`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from tinylib.paths import write_atomic

__all__ = ["SizeMismatchError", "hub_download", "hub_download_prefix", "hub_offline"]

_TRUE = {"1", "true", "yes", "on"}


class SizeMismatchError(ValueError):
    """The bytes received disagree with the size the Hub announced (the partial file is removed)."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now
    (huggingface_hub reads it once, at import; tests and notebooks change it later)."""
    import huggingface_hub.constants as hfc  # huggingface_hub takes ~0.5 s to import: only when downloading

    env = os.environ.get("HF_HUB_OFFLINE")
    return env.strip().lower() in _TRUE if env is not None else hfc.is_offline_mode()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _locate(repo_id: str, filename: str, target: Path, repo_type: str, revision: str,
            endpoint: str | None) -> tuple:
    """(the Hub's metadata of the file, the headers to fetch it with); refuses to go online when offline."""
    # huggingface_hub takes ~0.5 s to import: only when downloading
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    if hub_offline():
        raise FileNotFoundError(f"HF_HUB_OFFLINE is set and {target} does not exist")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    headers = build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the Hub token must not travel there
    return meta, headers


def hub_download(
    repo_id: str,
    filename: str,
    dest_dir: str | os.PathLike,
    *,
    repo_type: str = "model",
    revision: str = "main",
    endpoint: str | None = None,
    progress: bool = True,
) -> Path:
    """`dest_dir/filename` (sub-folders of `filename` kept),
    downloaded from the Hub unless it is already there.

    A file under the final name is returned without network access: it was renamed into place only after its
    size was checked. Otherwise the download resumes from `<name>.part` when the Hub's ETag and size still
    match those recorded beside it, else starts over. `endpoint` defaults to $HF_ENDPOINT read at call time.
    Raises FileNotFoundError when offline ($HF_HUB_OFFLINE) with no local file, SizeMismatchError when the
    received size is wrong, and huggingface_hub/httpx errors for network and HTTP failures
    (the `.part` stays).
    """
    from huggingface_hub.file_download import http_get  # ~0.5 s to import: only when downloading

    target = Path(dest_dir) / filename
    if target.is_file():
        return target
    meta, headers = _locate(repo_id, filename, target, repo_type, revision, endpoint)

    part = target.with_name(target.name + ".part")
    sidecar = target.with_name(target.name + ".part.json")
    stamp = {"etag": meta.etag, "size": meta.size}
    if _read_json(sidecar) != stamp or (
        meta.size is not None and part.is_file() and part.stat().st_size > meta.size
    ):
        # another file version (or an unknown one): its bytes cannot be continued
        part.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_json(sidecar, stamp)
    # append: http_get writes from the current position, i.e. after the saved bytes
    with open(part, "ab") as f:
        try:
            http_get(meta.location, f, resume_size=f.tell(), headers=headers, expected_size=meta.size,
                     displayed_filename=Path(filename).name, tqdm_class=None if progress else _quiet_tqdm())
        except OSError as e:
            # http_get's size check raises a bare OSError; HTTP, offline and disk errors are subclasses or
            # carry an errno, and keep the bytes we have for the next call.
            if type(e) is not OSError or e.errno is not None:
                raise
            mismatch = e
        else:
            mismatch = None
    size = part.stat().st_size
    if mismatch is not None or (meta.size is not None and size != meta.size):
        part.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        announced = f"{meta.size:,} bytes" if meta.size is not None else "another size"
        raise SizeMismatchError(
            f"downloading {filename} from {repo_id} gave {size:,} bytes but the Hub announced {announced}: "
            f"removed the partial file; retry "
            f"(if it persists, the file is changing on the Hub or a proxy alters it)"
        ) from mismatch
    os.replace(part, target)
    sidecar.unlink(missing_ok=True)
    return target


def _quiet_tqdm() -> type:
    """huggingface_hub's tqdm, always disabled (http_get takes a class, not a `disable` flag)."""
    from huggingface_hub.utils import tqdm  # only when downloading, like the rest of huggingface_hub

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    return QuietTqdm


def hub_download_prefix(repo_id: str, filename: str, dest: str | os.PathLike, n_bytes: int, *,
                        cut_after: bytes = b"", repo_type: str = "model", revision: str = "main",
                        endpoint: str | None = None, progress: bool = True) -> Path:
    """The first `n_bytes` of a Hub file (one HTTP Range request), cut after the last `cut_after` in them, as
    the file `dest`; returned without network access when `dest` exists. For a quick run that needs a sample
    of a 2 GB file, not all of it. Written under a temporary name and renamed when complete."""
    from huggingface_hub.utils import get_session  # ~0.5 s to import: only when downloading
    from tqdm.auto import tqdm

    if int(n_bytes) < 1:
        raise ValueError(f"n_bytes={n_bytes}: ask for a positive number of bytes (e.g. 40_000_000 for 40 MB)")
    dest = Path(dest)
    if dest.is_file():
        return dest
    meta, headers = _locate(repo_id, filename, dest, repo_type, revision, endpoint)
    n_bytes = min(int(n_bytes), meta.size or int(n_bytes))
    if progress:  # the size up front: what this costs, and what the whole file would
        whole = f"{meta.size / 1e6:,.1f} MB" if meta.size else "an unknown size"
        print(f"{filename}: fetching its first {n_bytes / 1e6:,.1f} MB of {whole}")
    headers["Range"] = f"bytes=0-{n_bytes - 1}"
    chunks, got = [], 0
    with (tqdm(total=n_bytes, unit="B", unit_scale=True, desc=f"{filename} (first {n_bytes / 1e6:,.0f} MB)",
               disable=not progress) as bar,
          get_session().stream("GET", meta.location, headers=headers, follow_redirects=True) as response):
        response.raise_for_status()
        for chunk in response.iter_bytes():  # a server that ignores Range sends it all: stop at n_bytes
            chunk = chunk[: n_bytes - got]
            chunks.append(chunk)
            got += len(chunk)
            bar.update(len(chunk))
            if got >= n_bytes:
                break
    data = b"".join(chunks)
    if len(data) < n_bytes:
        raise SizeMismatchError(f"asked {repo_id}/{filename} for its first {n_bytes:,} bytes, got "
                                f"{len(data):,}")
    if cut_after:
        end = data.rfind(cut_after)
        if end < 0:
            raise ValueError(f"the first {n_bytes:,} bytes of {filename} hold no {cut_after!r}: ask for more")
        data = data[: end + len(cut_after)]
    return write_atomic(dest, data)
