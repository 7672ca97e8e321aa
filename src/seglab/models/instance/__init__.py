"""Instance-segmentation models: Mask R-CNN builders on torchvision (``mask_rcnn``) and RoI poolers (``poolers``)."""
