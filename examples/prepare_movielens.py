"""Convert MovieLens-100K to the user format in OUT/raw, then prepare it for training in OUT/prepared.

    .venv/bin/python examples/prepare_movielens.py --out data/ml-100k                  # recbole wheel
    .venv/bin/python examples/prepare_movielens.py --source grouplens --path ml-100k.zip --out data/ml-100k

By default the data come from the recbole 1.2.1 wheel on PyPI, downloaded once with pip into
--cache-dir (never installed); --source grouplens reads GroupLens' ml-100k.zip or its folder.
See docs/data_format.md.
"""

import argparse

from marn_rec.data.sources.cli import add_prepare_arguments, output_dirs, run_prepare
from marn_rec.data.sources.common import ERRORS
from marn_rec.data.sources.movielens import DEFAULT_CACHE_DIR, convert_movielens


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default="recbole", choices=["recbole", "grouplens"], help="published layout")
    p.add_argument("--path", default=None, help="a zip or folder (recbole: fetched when not given)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="where the recbole wheel is kept")
    p.add_argument("--out", required=True, help="output folder: OUT/raw, OUT/prepared")
    p.add_argument("--errors", default="raise", choices=ERRORS, help="bad data: raise, or drop and count")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_prepare_arguments(p)
    a = p.parse_args(argv)
    dirs = output_dirs(a.out)
    summary = convert_movielens(dirs["raw"], a.source, a.path, a.cache_dir, errors=a.errors)
    run_prepare(dirs["raw"], dirs["prepared"], a, source=summary.source, progress=not a.no_progress)


if __name__ == "__main__":
    main()
