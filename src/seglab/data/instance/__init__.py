"""Instance-segmentation data in torchvision's detection schema (see :mod:`seglab.data.instance.base`).

Data sets (``data.dataset`` in a recipe with ``task: instance``): ``isbi2012_cells`` (ISBI 2012,
each 4-connected cell its own instance), ``synthetic_instances`` (the road scenes, every pole and
car its own id), ``coco`` (a COCO-format folder) and ``instance_folder`` (instance-id PNGs in the
generic folder layout, :mod:`seglab.data.instance.folder`). :func:`instance_dataset_info` and
:func:`build_instance_dataset` are what :func:`seglab.data.build_dataset` calls for them.
"""

from __future__ import annotations

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.base import DatasetInfo
from seglab.data.instance.base import InstanceDataset, build_instance_transforms, collate_instances, make_target, masks_to_boxes
from seglab.data.instance.coco import CocoInstances, coco_annotation_file, read_coco_index
from seglab.data.instance.folder import InstanceFolder, instance_folder_info, instance_folder_samples
from seglab.data.instance.sources import ISBICells, SyntheticInstances, isbi_cells_info, synthetic_instances_info

__all__ = ["INSTANCE_DATASETS", "CocoInstances", "ISBICells", "InstanceDataset", "InstanceFolder", "SyntheticInstances",
           "build_instance_dataset", "build_instance_transforms", "collate_instances", "instance_dataset_info",
           "make_target", "masks_to_boxes"]

INSTANCE_DATASETS = ("isbi2012_cells", "synthetic_instances", "coco", "instance_folder")


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    return [(0, 0, 0)] + [((97 * k) % 256, (57 * k + 80) % 256, (151 * k + 40) % 256) for k in range(1, n)]


def instance_dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Classes (background first) of an instance data set; ``coco`` reads its training categories."""
    kind = str(cfg.dataset).lower()
    if kind == "instance_folder":
        if cfg.rgb_masks:
            raise SeglabError("--data.rgb_masks applies to semantic folder data sets; an instance folder's class PNGs "
                              "in masks/ are single-channel class ids. Drop --data.rgb_masks or convert the masks.")
        return instance_folder_info(cfg.num_classes, cfg.class_names, cfg.palette, cfg.ignore_index, _default_palette)
    if kind == "isbi2012_cells":
        return isbi_cells_info()
    if kind == "synthetic_instances":
        return synthetic_instances_info()
    index = read_coco_index(coco_annotation_file(cfg.root, cfg.train_split))
    return DatasetInfo(len(index.class_names), index.class_names, _default_palette(len(index.class_names)), 255)


def build_instance_dataset(cfg: DataConfig, split: str, train: bool) -> InstanceDataset:
    """The instance data set of ``split`` with training augmentation (``train``) or none."""
    kind = str(cfg.dataset).lower()
    transform = build_instance_transforms(cfg, train)
    if kind == "isbi2012_cells":
        from seglab.data.isbi import isbi_samples, resolve_isbi_root

        samples = isbi_samples(resolve_isbi_root(cfg.root), split, train_split=cfg.train_split,
                               val_split=cfg.val_split, val_indices=cfg.val_indices)
        return ISBICells(samples[: cfg.limit] if cfg.limit else samples, transform=transform, split=split)
    if kind == "synthetic_instances":
        streams = {cfg.train_split: (0, cfg.synthetic_train), cfg.val_split: (1, cfg.synthetic_val)}
        streams.setdefault("test", (2, cfg.synthetic_val))
        if split not in streams:
            raise SeglabError(f"The synthetic data set has splits {', '.join(streams)}, not {split!r}."
                              f"{did_you_mean(split, streams)}")
        stream, count = streams[split]
        count = min(count, cfg.limit) if cfg.limit else count
        return SyntheticInstances(count, seed=cfg.synthetic_seed, stream=stream, size=cfg.synthetic_size,
                                  transform=transform, split=split)
    if kind == "instance_folder":
        samples = instance_folder_samples(cfg.root, split, cfg.train_split)
        return InstanceFolder(samples[: cfg.limit] if cfg.limit else samples, instance_dataset_info(cfg),
                              transform=transform, split=split)
    index = read_coco_index(coco_annotation_file(cfg.root, split))
    info = instance_dataset_info(cfg)
    if index.class_names != info.class_names:
        raise SeglabError(f"COCO split {split!r} ({index.path}) has categories {index.class_names[1:]}, but the training "
                          f"split has {info.class_names[1:]}; every split needs the same 'categories'.")
    dataset = CocoInstances(index, info, transform=transform, split=split)
    if cfg.limit:
        dataset.names, dataset.files = dataset.names[: cfg.limit], dataset.files[: cfg.limit]
        dataset.index.images = dataset.index.images[: cfg.limit]
    return dataset
