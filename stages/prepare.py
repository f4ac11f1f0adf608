"""prepare@<dataset>: download (or copy) the CIFAR archive, verify it, decode it to arrays.

Outputs (a public contract): data/raw/<dataset>/<archive>, the archive as downloaded;
data/prepared/<dataset>/{train,test}.npz with x (N, 32, 32, 3) uint8 NHWC and y (N,) int64;
data/prepared/<dataset>/classes.json, the class names in label order.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from stages import cifar
from stages.cli import UserError, cli
from stages.entry import PREPARED
from stages.outputs import atomic_path, digest, discard, remove_stale, temporary
from stages.params import data_params, dataset_argument, local_file, redact, shown

RAW = Path("data/raw")


# a download must not hang: no byte for STALL seconds (before or after the headers), or less than STALL_BYTES
# in any STALL seconds (a trickle), ends it. $STAGES_DOWNLOAD_STALL sets STALL for slow links.
STALL = float(os.environ.get("STAGES_DOWNLOAD_STALL", 20))
STALL_BYTES = 1 << 16
CHUNK = 1 << 20


def _receive(response, f, url):
    """Copies the body to f, printing progress lines (plain text: a log has no terminal); raises TimeoutError
    when the stall limit is reached."""
    total = int(response.headers.get("content-length") or 0)
    done, window, window_bytes, shown = 0, time.monotonic(), 0, 0
    while chunk := response.raw.read1(CHUNK):
        f.write(chunk)
        done, window_bytes = done + len(chunk), window_bytes + len(chunk)
        if time.monotonic() - window > STALL:
            if window_bytes < STALL_BYTES:
                raise TimeoutError(f"less than {STALL_BYTES} bytes in {STALL:g} s")
            window, window_bytes = time.monotonic(), 0
        if total and done * 10 // total > shown:
            shown = done * 10 // total
            print(f"{redact(url)}: {done / 1e6:.1f} of {total / 1e6:.1f} MB", flush=True)
    if total and done != total:
        raise EOFError(f"{done} of {total} bytes")


def _download(url, path, key):
    """url to path; ~/.netrc (or the file $NETRC names) gives credentials, as for curl and pip."""
    import requests
    import urllib3

    print(f"Downloading data from {redact(url)}", flush=True)
    try:
        with requests.get(url, stream=True, timeout=STALL) as response, open(path, "wb") as f:
            response.raise_for_status()
            _receive(response, f, url)
    except (requests.RequestException, urllib3.exceptions.HTTPError, TimeoutError, EOFError) as e:
        stalled = isinstance(
            e, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError)
        ) or "timed out" in str(e)
        why = f"no progress for {STALL:g} s" if stalled else " ".join(redact(str(e)).split())[:300]
        raise UserError(
            f"{key}.url: cannot download {redact(url)} ({type(e).__name__}: {why}); offline or on "
            f"a slow link, download the archive elsewhere and set {key}.url to its local path or "
            f"file:// URL (or raise $STAGES_DOWNLOAD_STALL, seconds)"
        ) from None
    return path


def _verify(path, md5, url, local, key):
    """Refuses an archive whose md5 is not md5, printing both and the fix that fits where it came from."""
    actual = digest(path, "md5")
    if md5 is not None and actual != md5:
        fix = (
            f"check that {key}.url names the right file, or set {key}.md5 to {actual} if it is"
            if local
            else f"download it again (a cut download), or set {key}.md5 to {actual} if this archive is right"
        )
        raise UserError(
            f"{key}.md5: {local or url} has md5 {actual}, expected {md5}; {fix} (null skips the check)"
        )
    return actual


@contextlib.contextmanager
def fetch(url, md5, dest_dir, key):
    """Yields the archive at url, md5-checked, in a temporary folder beside dest_dir; moved into dest_dir when
    the block ends without an error (a refused archive leaves nothing in dest_dir). http(s), file:// and plain
    local paths are accepted."""
    local = local_file(url, key)
    name = local.name if local else urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]
    if name in ("", ".", ".."):  # params' check refuses these too; the archive is saved under this name
        raise UserError(
            f"{key}.url: {shown(url)} does not end in the archive's file name; give the archive's own URL"
        )
    if md5 is None:
        print(
            f"warning: {key}.md5 is null: the archive's integrity is not checked", file=sys.stderr, flush=True
        )
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest_dir)  # a killed earlier run's download
    folder = temporary(dest_dir)
    try:
        path = shutil.copyfile(local, folder / name) if local else _download(url, folder / name, key)
        _verify(path, md5, url, local, key)
        yield path
        with atomic_path(dest_dir, directory=True) as out:
            shutil.move(path, out / name)
    finally:
        discard(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset = dataset_argument(parser)
    cfg = data_params(dataset)
    with fetch(cfg["url"], cfg["md5"], RAW / dataset, f"data.{dataset}") as archive:
        splits, classes = cifar.read(archive, dataset, cfg.get("labels", "fine"), name=redact(cfg["url"]))
    with atomic_path(PREPARED / dataset, directory=True) as out:
        for split, (x, y) in splits.items():
            np.savez(out / f"{split}.npz", x=x, y=y)
        (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n", encoding="utf-8")
    counts = {s: np.bincount(y, minlength=len(classes)) for s, (_, y) in splits.items()}
    print(
        f"prepare@{dataset}: {len(splits['train'][1])} train, {len(splits['test'][1])} test images, "
        f"{len(classes)} classes ({counts['train'].min()}-{counts['train'].max()} train images per class)"
    )


if __name__ == "__main__":
    cli(main)
