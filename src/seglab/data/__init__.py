"""Data sets for seglab: CamVid, ISBI 2012 EM, SUN RGB-D, generic image/mask folders and synthetic road scenes.

The engine uses :func:`dataset_info` and :func:`build_dataset`; :func:`compute_class_weights`
gives SegNet's median-frequency loss weights; :func:`check_dataset` diagnoses a folder
before a long training run; :func:`download_dataset` fetches a public data set (``seglab data download``);
:func:`read_image` decodes one image for inference.

Example:
    >>> from seglab.core.config import DataConfig
    >>> cfg = DataConfig(dataset="synthetic", synthetic_train=8)
    >>> ds = build_dataset(cfg, "train", train=True)
    >>> image, mask = ds[0]
    >>> tuple(image.shape), ds.info.num_classes
    ((3, 96, 128), 7)
"""

from seglab.data.base import DatasetInfo, SegmentationDataset
from seglab.data.build import DATASETS, build_dataset, dataset_info, default_palette
from seglab.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE, CAMVID_VOID, CAMVID_VOID_COLOR
from seglab.data.check import check_dataset
from seglab.data.class_weights import WEIGHT_METHODS, compute_class_weights
from seglab.data.download import CATALOGUE, download_dataset, format_catalogue
from seglab.data.io import read_image, read_mask, read_rgb_mask
from seglab.data.isbi import ISBI_CLASSES, ISBI_PALETTE, ISBI2012Dataset
from seglab.data.report import DatasetReport, Issue
from seglab.data.sunrgbd import SUNRGBD_CLASSES, SUNRGBD_PALETTE, SUNRGBDDataset
from seglab.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, SyntheticRoadScenes, render_scene
from seglab.data.transforms import SegmentationTransform, build_transforms, inference_size
from seglab.data.weight_map import transform_with_weight_map, unet_weight_map

__all__ = [
    "DatasetInfo",
    "SegmentationDataset",
    "SyntheticRoadScenes",
    "ISBI2012Dataset",
    "SUNRGBDDataset",
    "unet_weight_map",
    "transform_with_weight_map",
    "DATASETS",
    "dataset_info",
    "build_dataset",
    "build_transforms",
    "inference_size",
    "SegmentationTransform",
    "compute_class_weights",
    "WEIGHT_METHODS",
    "check_dataset",
    "download_dataset",
    "format_catalogue",
    "CATALOGUE",
    "DatasetReport",
    "Issue",
    "read_image",
    "read_mask",
    "read_rgb_mask",
    "render_scene",
    "default_palette",
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CAMVID_VOID",
    "CAMVID_VOID_COLOR",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PALETTE",
    "ISBI_CLASSES",
    "ISBI_PALETTE",
    "SUNRGBD_CLASSES",
    "SUNRGBD_PALETTE",
]
