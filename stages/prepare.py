"""prepare@<dataset>: download (or copy) the CIFAR archive, verify it, decode it to arrays.

Outputs (a public contract): data/raw/<dataset>/<archive>, the archive as downloaded;
data/prepared/<dataset>/{train,test}.npz with x (N, 32, 32, 3) uint8 NHWC and y (N,) int64;
data/prepared/<dataset>/classes.json, the class names in label order.
"""
import argparse
import contextlib
import hashlib
import io
import json
import re
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from stages import cifar
from stages.outputs import atomic_path, remove_stale, temporary
from stages.params import PARAMS, SCHEMA, UserError, _validate, cli, dataset_argument, parse

RAW, PREPARED = Path("data/raw"), Path("data/prepared")


def _local_file(url, key):
    """The local file that url names (a plain path or a file:// URL); None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise UserError(f"{key}.url: {url!r}: no such file")
        return path
    path = Path(url).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{key}.url: {url!r} is neither a URL nor an existing file; give an http(s):// "
                        f"or file:// URL or the path of a local archive")
    return path


class _WithoutColours(io.TextIOBase):
    """A stream that writes to `stream` without ANSI colour codes and backspaces: Keras' progress bar writes
    both even when the output is a log file (a `dvc repro` redirected, a queue worker's log)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.stream.write(re.sub(r"\x1b\[[0-9;]*m|\x08+", "", text))  # colours, and backspaces

    def flush(self):
        self.stream.flush()


def _download(url, name, folder, key):
    from keras.utils import get_file  # progress bar and retries in one well-kept place

    plain = contextlib.nullcontext() if sys.stdout.isatty() else contextlib.redirect_stdout(_WithoutColours(sys.stdout))
    try:
        with plain:
            return Path(get_file(name, url, cache_dir=folder, cache_subdir="."))
    except Exception as e:  # get_file wraps network errors in generic exceptions
        raise UserError(f"{key}.url: cannot download {url} ({type(e).__name__}: {e}); offline, download "
                        f"the archive elsewhere and set {key}.url to its local path or file:// URL") from None


def file_md5(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _verify(path, md5, url, local, key):
    """Refuses an archive whose md5 is not md5, printing both and the fix that fits where it came from."""
    actual = file_md5(path)
    if md5 is not None and actual != md5:
        fix = (f"check that {key}.url names the right file, or set {key}.md5 to {actual} if it is" if local else
               f"download it again (a cut download), or set {key}.md5 to {actual} if this archive is right")
        raise UserError(f"{key}.md5: {local or url} has md5 {actual}, expected {md5}; {fix} (null skips the check)")
    return actual


def fetch(url, md5, dest_dir, key):
    """The archive at url in dest_dir, md5-checked. http(s), file:// and plain local paths are accepted."""
    local = _local_file(url, key)
    name = local.name if local else urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]
    if name in ("", ".", ".."):  # params' check refuses these too; the archive is saved under this name
        raise UserError(f"{key}.url: {url!r} does not end in the archive's file name; give the archive's own URL")
    if md5 is None:
        print(f"warning: {key}.md5 is null: the archive's integrity is not checked", file=sys.stderr, flush=True)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest_dir)  # a killed earlier run's download
    folder = temporary(dest_dir)
    try:
        path = shutil.copyfile(local, folder / name) if local else _download(url, name, folder, key)
        _verify(path, md5, url, local, key)
        with atomic_path(dest_dir, directory=True) as out:
            shutil.move(path, out / name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dest_dir / name


def data_params(dataset):
    """data.<dataset> of params.yaml, checked. Only that section, all that prepare and source@ use: the full
    check (the check stage's, which runs first) imports Keras for the activation names, ~4 s, and source@ runs
    on every `dvc repro`."""
    errors, params = [], parse()
    _validate(SCHEMA["data"], params.get("data") if isinstance(params, dict) else None, "data.", errors)
    if errors:
        raise UserError(f"{PARAMS}: " + f"\nerror: {PARAMS}: ".join(errors))
    return params["data"][dataset]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset = dataset_argument(parser)
    cfg = data_params(dataset)
    archive = fetch(cfg["url"], cfg["md5"], RAW / dataset, f"data.{dataset}")
    splits, classes = cifar.read(archive, dataset, cfg.get("labels", "fine"))
    with atomic_path(PREPARED / dataset, directory=True) as out:
        for split, (x, y) in splits.items():
            np.savez(out / f"{split}.npz", x=x, y=y)
        (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    counts = {s: np.bincount(y, minlength=len(classes)) for s, (_, y) in splits.items()}
    print(f"prepare@{dataset}: {len(splits['train'][1])} train, {len(splits['test'][1])} test images, "
          f"{len(classes)} classes ({counts['train'].min()}-{counts['train'].max()} train images per class)")


if __name__ == "__main__":
    cli(main)
