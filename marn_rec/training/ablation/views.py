"""A prepared directory without some of its modalities, to ask what a modality adds (e.g. the
statistics of a real data set): the same samples, vocabularies and item table, linked, and a
manifest that no longer lists the dropped modalities, so that
:func:`~marn_rec.training.sources.model_config_for_manifest` leaves them out of every configuration.
"""

import json
import os
from typing import List, Sequence

from marn_rec.config import IDS, IMAGE, STATISTIC, TITLE
from marn_rec.data.prepare import layout

DROPPABLE = (STATISTIC, TITLE, IMAGE)


def modality_view(prepared_dir: str, out_dir: str, drop: Sequence[str]) -> str:
    """Writes ``out_dir``: every file of ``prepared_dir`` as a symbolic link, and a manifest
    without the modalities ``drop`` (of :data:`DROPPABLE`); returns ``out_dir``. Rewrites an
    earlier view in the same place."""
    unknown = [m for m in drop if m not in DROPPABLE]
    if unknown:
        raise ValueError(f"can drop only {DROPPABLE} ({IDS} are the item itself), not {unknown}")
    source = os.path.abspath(prepared_dir)
    with open(os.path.join(source, layout.MANIFEST)) as f:
        manifest = json.load(f)
    if STATISTIC in drop:
        manifest["statistics"] = []
        manifest["statistic_boundaries"] = {}
    if TITLE in drop:
        manifest["title"] = None
    if IMAGE in drop:
        manifest["image_dim"] = None
    manifest["view"] = {"of": source, "dropped": list(drop)}
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(source):
        if name == layout.MANIFEST:
            continue
        link = os.path.join(out_dir, name)
        if os.path.islink(link):
            os.remove(link)
        os.symlink(os.path.join(source, name), link)
    tmp = os.path.join(out_dir, layout.MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, layout.MANIFEST))
    return out_dir


VIEW_DIR = "data_view"  # where examples/ablation_study.py --drop-modalities puts the view


def dropped_modalities(study_dir: str) -> List[str]:
    """The modalities a study's runs went without (from its data view's manifest; [] if none)."""
    path = os.path.join(study_dir, VIEW_DIR, layout.MANIFEST)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(json.load(f).get("view", {}).get("dropped", []))


def without_suffix(dropped: Sequence[str]) -> str:
    """The suffix that names a configuration trained without ``dropped``: " without statistic"."""
    return f" without {', '.join(dropped)}" if dropped else ""


def full_configuration(model: str) -> str:
    """"MARN without statistic" -> "MARN"; a name without the suffix is returned as it is."""
    return model.split(" without ")[0]
