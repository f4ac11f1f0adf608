"""source@<dataset>: a stamp of the archive prepare@<dataset> reads, rewritten on every `dvc repro`.

DVC tracks params.yaml, not the file data.<dataset>.url names: a local archive replaced at the same path (with
md5: null) went unnoticed. This stage is `always_changed` and cheap (one md5 of the local file, ~0.3 s for
CIFAR-10); it writes data/source/<dataset>.json = {"url": ..., "md5": ...}: for a local file (a path or file://)
the md5 of its content, for http(s) the md5 params.yaml gives (a remote file is not fetched to check it).
prepare@<dataset> depends on the stamp: same archive, same bytes, so prepare and everything after it stay
cached; another archive, another stamp, and prepare reruns. Touching the file changes nothing.
"""

import argparse
import json
from pathlib import Path

from stages.cli import cli
from stages.outputs import atomic_path, digest
from stages.params import data_params, dataset_argument, local_file

SOURCE = Path("data/source")


def stamp(url, md5, key):
    local = local_file(url, key)
    return {"url": url, "md5": digest(local, "md5") if local else md5}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset = dataset_argument(parser)
    cfg = data_params(dataset)
    with atomic_path(SOURCE / f"{dataset}.json") as tmp:
        tmp.write_text(
            json.dumps(stamp(cfg["url"], cfg["md5"], f"data.{dataset}"), indent=1) + "\n", encoding="utf-8"
        )


if __name__ == "__main__":
    cli(main)
