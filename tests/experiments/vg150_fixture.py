"""A small VG150 dataset in the released file formats, with JPEG images, for end-to-end tests.

:func:`write_vg150_fixture` writes what a researcher downloads for Scene-Graph-Benchmark's VG150:

* ``VG-SGG-with-attri.h5`` with the released datasets, dtypes and shapes (``split``,
  ``img_to_first_box`` ..., ``labels`` int64[N, 1], ``boxes_1024`` / ``boxes_512`` int32 centre-size
  boxes at the longer side 1024 / 512, ``relationships`` int32[R, 2] global box indices,
  ``predicates`` int64[R, 1], ``attributes``);
* ``VG-SGG-dicts-with-attri.json``: the real dicts file (the bundled copy, decompressed);
* ``image_data.json``: one entry per image with its ``width`` / ``height`` (the released order);
* ``VG_100K/<image_id>.jpg``: JPEGs of exactly the stated sizes, each object drawn as a filled
  rectangle of a colour of its class (so pixels carry the labels).

Images use a few frequent VG150 classes and predicates so every split has relations.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import h5py
import numpy as np
from PIL import Image

from sgg_jax.data import vg150

# Frequent VG150 classes / predicates of the bundled dicts (names checked when written).
CLASSES = ("man", "shirt", "tree", "building", "window", "table")
PREDICATES = ("on", "has", "wearing", "near")


def _ids(names, mapping):
    missing = [name for name in names if name not in mapping]
    if missing:
        raise KeyError(f"not in the VG150 dicts: {missing}")
    return [int(mapping[name]) for name in names]


def write_vg150_fixture(
    root: str | os.PathLike,
    *,
    num_train: int = 16,
    num_test: int = 6,
    sizes: tuple[tuple[int, int], ...] = ((160, 120), (128, 128), (120, 160), (144, 108)),
    seed: int = 0,
) -> dict[str, str]:
    """Writes the fixture under ``root``; returns its paths.

    Returns:
      ``{"h5", "dicts", "image_data", "image_dir"}`` (the values of ``--vg150_h5``,
      ``--vg150_dicts``, ``--vg150_image_data`` and the image folder).
    """
    root = os.fspath(root)
    image_dir = os.path.join(root, "VG_100K")
    os.makedirs(image_dir, exist_ok=True)
    dicts_path = os.path.join(root, "VG-SGG-dicts-with-attri.json")
    bundled = os.path.join(os.path.dirname(vg150.__file__), "resources", vg150.BUNDLED_DICTS)
    with gzip.open(bundled, "rb") as source, open(dicts_path, "wb") as target:
        shutil.copyfileobj(source, target)
    with open(dicts_path) as handle:
        dicts = json.load(handle)
    class_ids = _ids(CLASSES, dicts["label_to_idx"])
    predicate_ids = _ids(PREDICATES, dicts["predicate_to_idx"])
    palette = np.random.default_rng(1234).integers(0, 256, (len(CLASSES), 3))

    rng = np.random.default_rng(seed)
    tables: dict[str, list] = {
        key: []
        for key in (
            "split",
            "img_to_first_box",
            "img_to_last_box",
            "img_to_first_rel",
            "img_to_last_rel",
            "labels",
            "boxes",
            "relationships",
            "predicates",
        )
    }
    image_data = []
    num_images = num_train + num_test
    for index in range(num_images):
        image_id = 1000 + index
        width, height = sizes[index % len(sizes)]
        count = int(rng.integers(3, 6))
        image = np.full((height, width, 3), 235, np.uint8)
        first_box = len(tables["labels"])
        for _ in range(count):
            klass = int(rng.integers(len(CLASSES)))
            w = int(rng.integers(width // 5, width // 2))
            h = int(rng.integers(height // 5, height // 2))
            x1 = int(rng.integers(0, width - w))
            y1 = int(rng.integers(0, height - h))
            image[y1 : y1 + h, x1 : x1 + w] = palette[klass]
            scale = vg150.BOX_SCALE / max(width, height)
            tables["labels"].append([class_ids[klass]])
            tables["boxes"].append(
                [(x1 + w / 2) * scale, (y1 + h / 2) * scale, w * scale, h * scale]
            )
        Image.fromarray(image).save(os.path.join(image_dir, f"{image_id}.jpg"), quality=90)
        first_rel = len(tables["predicates"])
        pairs = {
            (int(s), int(o))
            for s, o in rng.integers(0, count, (int(rng.integers(1, 4)), 2))
            if s != o
        } or {(0, 1)}
        for subject, obj in sorted(pairs):
            tables["relationships"].append([first_box + subject, first_box + obj])
            tables["predicates"].append([predicate_ids[int(rng.integers(len(PREDICATES)))]])
        tables["split"].append(0 if index < num_train else 2)
        tables["img_to_first_box"].append(first_box)
        tables["img_to_last_box"].append(first_box + count - 1)
        tables["img_to_first_rel"].append(first_rel)
        tables["img_to_last_rel"].append(len(tables["predicates"]) - 1)
        image_data.append(
            {
                "image_id": image_id,
                "width": width,
                "height": height,
                "url": f"https://example.invalid/VG_100K/{image_id}.jpg",
                "coco_id": None,
                "flickr_id": None,
            }
        )

    boxes_1024 = np.rint(np.asarray(tables["boxes"], np.float64)).astype(np.int32)
    h5_path = os.path.join(root, "VG-SGG-with-attri.h5")
    with h5py.File(h5_path, "w") as h5_file:
        for key in ("split", "img_to_first_box", "img_to_last_box"):
            h5_file.create_dataset(key, data=np.asarray(tables[key], np.int32))
        for key in ("img_to_first_rel", "img_to_last_rel"):
            h5_file.create_dataset(key, data=np.asarray(tables[key], np.int32))
        h5_file.create_dataset("labels", data=np.asarray(tables["labels"], np.int64))
        h5_file.create_dataset("boxes_1024", data=boxes_1024)
        h5_file.create_dataset("boxes_512", data=boxes_1024 // 2)
        h5_file.create_dataset("relationships", data=np.asarray(tables["relationships"], np.int32))
        h5_file.create_dataset("predicates", data=np.asarray(tables["predicates"], np.int64))
        h5_file.create_dataset("attributes", data=np.zeros((boxes_1024.shape[0], 10), np.int64))
    image_data_path = os.path.join(root, "image_data.json")
    with open(image_data_path, "w") as handle:
        json.dump(image_data, handle)
    return {
        "h5": h5_path,
        "dicts": dicts_path,
        "image_data": image_data_path,
        "image_dir": image_dir,
    }


def paper_flag_args(root: str | os.PathLike, **fixture_options) -> dict[str, tuple[str, ...]]:
    """The data and detector flags the paper flagfiles' commands name, per dataset.

    Writes under ``root`` a VG150 fixture (:func:`write_vg150_fixture`) and a tiny
    Scene-Graph-Benchmark-layout ``model_final.pth`` of 151 classes (random weights, torch's zip
    format); GQA-200 uses the bundled test split as both its train and test file.

    Returns:
      ``{"vg150": flags, "gqa200": flags}``.
    """
    from tests.detection import write_sgb_checkpoint

    root = os.fspath(root)
    vg = write_vg150_fixture(os.path.join(root, "vg150"), **fixture_options)
    checkpoint = os.path.join(root, "model_final.pth")
    write_sgb_checkpoint(checkpoint, 151)
    resources = os.path.join(os.path.dirname(vg150.__file__), "resources")
    gqa_test = os.path.join(resources, "GQA_200_Test.json.gz")
    return {
        "vg150": (
            f"--vg150_h5={vg['h5']}",
            f"--vg150_dicts={vg['dicts']}",
            f"--vg150_image_data={vg['image_data']}",
            f"--vg150_image_dir={vg['image_dir']}",
            f"--detector_checkpoint={checkpoint}",
        ),
        "gqa200": (
            f"--gqa200_train={gqa_test}",
            f"--gqa200_test={gqa_test}",
            f"--gqa200_id_info={os.path.join(resources, 'GQA_200_ID_Info.json.gz')}",
            f"--gqa200_image_dir={root}",
            f"--detector_checkpoint={checkpoint}",
        ),
    }
