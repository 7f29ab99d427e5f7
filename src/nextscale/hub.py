"""The Hugging Face Hub, for users with the internet: files and repos from the cache, or downloaded after one
quick reachability check (no retries), so that without the internet a load fails fast with what to do instead."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from nextscale.model_folder import CONFIG_NAME, CheckpointError, _first_line

HUB_CHECK_TIMEOUT_S = 2.5  # one reachability check of the Hub before a download; no retries


def hub_unreachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be used now (HF_HUB_OFFLINE, or no answer within `timeout` seconds), else None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    answer: list[str | None] = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            answer.append(None)
        except urllib.error.HTTPError:  # the server answered: reachable
            answer.append(None)
        except Exception as e:  # no DNS, refused, timed out, proxy ...
            reason = getattr(e, "reason", e)
            answer.append(f"{endpoint} cannot be reached ({reason})")

    thread = threading.Thread(target=probe, daemon=True)  # the timeout must bound name resolution too
    thread.start()
    thread.join(timeout + 0.5)
    return answer[0] if answer else f"{endpoint} did not answer within {timeout:g} s"


def _cached_hub_file(repo: str, filename: str) -> Path | None:
    """A file of a Hub repo already in the Hugging Face cache, looked up without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo, filename)
    except Exception:  # huggingface_hub missing or too old, unreadable cache
        return None
    return Path(found) if isinstance(found, (str, os.PathLike)) and Path(found).is_file() else None


DOWNLOAD_FAILED = "the download failed"


def _download_if_reachable(download) -> tuple[Path | None, str]:
    """(the path `download()` returns, "") when the Hub answers the quick check, else (None, why not)."""
    reason = hub_unreachable()
    if reason is not None:
        return None, reason
    try:
        return Path(download()), ""
    except Exception as e:  # no such repo or file, a dropped connection ...
        return None, f"{DOWNLOAD_FAILED} ({_first_line(e)})"


def fetch_file(repo: str, filename: str, name: str, how: str) -> Path:
    """A file of a Hub repo: from the Hugging Face cache, else downloaded when the Hub answers a quick check.

    `name` is what the user asked for (a preset), `how` what to do instead without the internet: both go into
    the CheckpointError raised when neither works."""
    cached = _cached_hub_file(repo, filename)
    if cached is not None:
        return cached
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(f"the preset {name!r} is downloaded with huggingface_hub, which is not installed: "
                              f"pip install huggingface_hub, or {how}") from None
    path, reason = _download_if_reachable(lambda: hf_hub_download(repo, filename))
    if path is not None:
        return path
    raise CheckpointError(f"the preset {name!r} needs {filename}, which is not in the Hugging Face cache, and {reason}: "
                          f"{how}")


def fetch_repo(name: str) -> Path:
    """The local folder of Hub repo `name` (a model folder pushed to the Hub): cached, else downloaded."""
    how = "download the repo's files and pass the local folder's path"
    cached = _cached_hub_file(name, CONFIG_NAME)  # a model folder pushed to the Hub, already downloaded
    if cached is not None:
        return cached.parent
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{name!r} is not a local path, and fetching it as a Hugging Face Hub repo needs "
                              f"huggingface_hub (pip install huggingface_hub); or {how}") from None
    path, reason = _download_if_reachable(lambda: snapshot_download(name))
    if path is not None:
        return path
    if not reason.startswith(DOWNLOAD_FAILED):
        try:  # a repo without config.json may still be cached
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            pass
    raise CheckpointError(f"{name!r}: no such file or folder (looked in {os.getcwd()}), and as a Hugging Face Hub "
                          f"repo id it is not in the cache and {reason}: {how}")
