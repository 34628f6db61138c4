"""Convert one Amazon 2014 category (McAuley et al.; the data of DIN and of the MARN paper) to the user
format in OUT/raw, then prepare it for training in OUT/prepared.

    .venv/bin/python examples/prepare_amazon.py \
        --reviews reviews_Electronics_5.json --meta meta_Electronics.json \
        --image-features image_features_Electronics.b --out data/amazon_electronics

The files are read in a stream (the Electronics image file is ~8 GB); see docs/data_format.md.
"""

import argparse

from marn_rec.data.sources.amazon import IMAGE_DIM, convert_amazon
from marn_rec.data.sources.cli import add_prepare_arguments, output_dirs, run_prepare
from marn_rec.data.sources.common import ERRORS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reviews", required=True, help="reviews_<Category>_5.json (JSON lines)")
    p.add_argument("--meta", required=True, help="meta_<Category>.json (one Python literal per line)")
    p.add_argument("--image-features", default=None, help="image_features_<Category>.b (none: no images)")
    p.add_argument("--out", required=True, help="output folder: OUT/raw, OUT/prepared")
    p.add_argument("--errors", default="raise", choices=ERRORS, help="bad data: raise, or drop and count")
    p.add_argument("--category-path", type=int, default=-1, help="category_id: leaf of this path (-1: DIN)")
    p.add_argument("--image-dim", type=int, default=IMAGE_DIM, help="floats per image-feature record")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_prepare_arguments(p)
    a = p.parse_args(argv)
    dirs = output_dirs(a.out)
    summary = convert_amazon(
        a.reviews, a.meta, dirs["raw"], a.image_features, errors=a.errors, category_path=a.category_path,
        image_dim=a.image_dim, progress=not a.no_progress,
    )
    run_prepare(dirs["raw"], dirs["prepared"], a, source=summary.source, progress=not a.no_progress)


if __name__ == "__main__":
    main()
