"""Rebuilds ../offline.html, the page template of `dvc plots show/diff` (`plots.html_template` in
.dvc/config), with vega, vega-lite and vega-embed inlined, so that the page draws its charts without a
network.

DVC's default page loads these three scripts from a CDN and stays blank offline. Inlined rather than linked:
a relative <script src> would be resolved against the output html, which `-o` puts anywhere.

    python .dvc/plots/vendor/build.py    # needs npm and the registry; edit PACKAGES to upgrade
"""

import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# package, version, built file; the majors DVC's own page uses (vega 5, vega-lite 5, vega-embed 6)
PACKAGES = [
    ("vega", "5.33.1", "build/vega.min.js"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js"),
]
# img: two revisions of a figure fit side by side in the window (`dvc plots diff` puts them on one line)
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC Plot</title>
<!-- DVC's scripts placeholder is left out on purpose: DVC would put its CDN script tags there -->
{inlined}
<style>table {{ border-spacing: 15px; }} img {{ max-width: calc(50vw - 40px); height: auto; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def main():
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, built in PACKAGES:
            tgz = subprocess.run(
                ["npm", "pack", "--silent", f"{name}@{version}"],
                cwd=tmp,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-1]
            with tarfile.open(Path(tmp, tgz)) as t:
                js = t.extractfile(f"package/{built}").read().decode()
                licence = t.extractfile("package/LICENSE") if "package/LICENSE" in t.getnames() else None
                if licence:  # the vega package ships none: LICENSE-vega is copied from its repository
                    (HERE / f"LICENSE-{name}").write_bytes(licence.read())
            # a </script> inside would end the inlined block early
            assert "</script" not in js and "{plot_divs}" not in js, built
            scripts.append(
                f"<!-- {name} {version}, npm {built}, BSD-3-Clause: .dvc/plots/vendor/LICENSE-{name} -->"
                f"\n<script>{js}</script>"
            )
    (HERE.parent / "offline.html").write_text(PAGE.format(inlined="\n".join(scripts)), encoding="utf8")


if __name__ == "__main__":
    main()
