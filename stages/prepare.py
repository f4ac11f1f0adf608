"""prepare@<dataset>: download (or copy) the CIFAR archive, verify it, decode it to arrays.

Outputs (a public contract): data/raw/<dataset>/<archive>, the archive as downloaded;
data/prepared/<dataset>/{train,test}.npz with x (N, 32, 32, 3) uint8 NHWC and y (N,) int64;
data/prepared/<dataset>/classes.json, the class names in label order.
"""
import argparse
import json
import shutil
import tempfile
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from stages import cifar
from stages.outputs import atomic_path
from stages.params import DATASETS, UserError, cli, load

RAW, PREPARED = Path("data/raw"), Path("data/prepared")


def fetch(url, md5, dest_dir, key):
    """The archive at url in dest_dir, md5-checked. http(s), file:// and plain local paths are accepted."""
    from keras.utils import get_file  # progress bar, resumable cache and hash check in one well-kept place

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        local = Path(url).expanduser().resolve()
        if not local.is_file():
            raise UserError(f"{key}.url: {url!r} is neither a URL nor an existing file; give an http(s):// "
                            f"or file:// URL or the path of a local archive")
        url = local.as_uri()
    elif parsed.scheme == "file" and not Path(urllib.request.url2pathname(parsed.path)).is_file():
        raise UserError(f"{key}.url: {url!r}: no such file")
    if md5 is None:
        warnings.warn(f"{key}.md5 is null: the archive's integrity is not checked", stacklevel=1)
    name = Path(parsed.path).name or "archive.tar.gz"
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir.parent, prefix=".download-") as tmp:
        try:
            path = get_file(name, url, file_hash=md5, hash_algorithm="md5", cache_dir=tmp, cache_subdir=".")
        except Exception as e:  # get_file wraps network errors in generic exceptions
            if "hash does not match" in str(e):
                raise UserError(f"{key}.md5: the archive from {url} does not match md5 {md5}; "
                                f"download it again, or set {key}.md5 to the right digest (null skips the check)")
            raise UserError(f"{key}.url: cannot download {url} ({type(e).__name__}: {e}); offline, download "
                            f"the archive elsewhere and set {key}.url to its local path or file:// URL")
        with atomic_path(dest_dir, directory=True) as out:
            shutil.move(path, out / name)
    return dest_dir / name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS)
    dataset = parser.parse_args().dataset
    params = load()
    cfg = params["data"][dataset]
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
