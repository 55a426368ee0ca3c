"""Nuclei training augmentations as detectron2 Augmentations, chosen by name in INPUT.NUCLEI_AUG.

Every geometric transform moves instance masks with ``apply_segmentation`` (exactly, or with
nearest-neighbour sampling), so bitmask instances stay aligned with the image; the mapper then
recomputes boxes from the transformed masks, which keeps them tight after non-affine warps.
Photometric transforms leave masks and coordinates untouched.
"""
import cv2
import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks
from detectron2.utils.registry import Registry

from ..errors import UserInputError, check_choice

NUCLEI_AUGMENTATION_REGISTRY = Registry("NUCLEI_AUGMENTATION")
NUCLEI_AUGMENTATION_REGISTRY.__doc__ = """
Builders ``fn(cfg) -> Augmentation``, registered under the names used in INPUT.NUCLEI_AUG.NAMES.
"""

# Colour deconvolution of H&E-DAB stains (Ruifrok & Johnston 2001; the matrix scikit-image uses).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
LOG_ADJUST = np.log(1e-6)  # optical densities are scaled so that intensity 1e-6 maps to 1


class Rot90Transform(T.Transform):
    """Rotate by ``k`` quarter turns counter-clockwise: exact, no interpolation."""

    def __init__(self, k, height, width):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return np.ascontiguousarray(np.rot90(img, self.k))

    def apply_coords(self, coords):
        width, height = self.width, self.height
        for _ in range(self.k):
            coords = np.stack([coords[:, 1], width - coords[:, 0]], axis=1)
            width, height = height, width
        return coords

    def inverse(self):
        height, width = (self.width, self.height) if self.k % 2 else (self.height, self.width)
        return Rot90Transform(-self.k % 4, height, width)


class ElasticTransform(T.Transform):
    """Warp by a dense displacement field: ``out(p) = in(p + d(p))``.

    Images are sampled bilinearly, masks with nearest neighbour so they stay binary; borders are
    mirrored. ``apply_coords`` uses the first-order inverse ``p - d(p)``, exact enough for boxes,
    which the nuclei mapper recomputes from the warped masks anyway.
    """

    def __init__(self, displacement):
        super().__init__()
        height, width = displacement.shape[1:]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.displacement = displacement
        self.map_x = xs + displacement[0]
        self.map_y = ys + displacement[1]

    def _warp(self, array, interpolation):
        return cv2.remap(array, self.map_x, self.map_y, interpolation,
                         borderMode=cv2.BORDER_REFLECT_101)

    def apply_image(self, img):
        return self._warp(img, cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation):
        return self._warp(segmentation, cv2.INTER_NEAREST)

    def apply_coords(self, coords):
        height, width = self.displacement.shape[1:]
        xs = np.clip(np.round(coords[:, 0]).astype(int), 0, width - 1)
        ys = np.clip(np.round(coords[:, 1]).astype(int), 0, height - 1)
        return coords - self.displacement[:, ys, xs].T


class GammaTransform(T.Transform):
    """``255 * (img / 255) ** gamma``: brightens (gamma < 1) or darkens dim nuclei non-linearly."""

    def __init__(self, gamma):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        out = 255.0 * (np.clip(img, 0, 255) / 255.0) ** self.gamma
        return np.round(out).astype(np.uint8) if img.dtype == np.uint8 else out.astype(img.dtype)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class StainTransform(T.Transform):
    """H&E-DAB stain jitter (Tellez et al. 2018): each stain's optical density becomes
    ``s * alpha + beta``, which mimics staining and scanner variation between labs."""

    def __init__(self, alpha, beta, channel_order):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        rgb = img[..., ::-1] if self.channel_order == "BGR" else img
        rgb = np.maximum(rgb.astype(np.float64) / 255.0, 1e-6)
        stains = (np.log(rgb) / LOG_ADJUST) @ HED_FROM_RGB
        stains = stains * self.alpha + self.beta
        rgb = np.exp((stains * LOG_ADJUST) @ RGB_FROM_HED)
        out = np.round(np.clip(rgb, 0, 1) * 255).astype(img.dtype)
        return np.ascontiguousarray(out[..., ::-1] if self.channel_order == "BGR" else out)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class RandomRot90(T.Augmentation):
    """A random multiple of 90 degrees; with a flip it covers all 8 symmetries of a square."""

    def get_transform(self, image):
        return Rot90Transform(np.random.randint(4), *image.shape[:2])

    def __repr__(self):
        return "RandomRot90()"


class RandomScale(T.Augmentation):
    """Zoom by a factor drawn from ``[min_scale, max_scale]``, so nuclei vary in pixel size.

    It follows the resize, so the image may exceed INPUT.MAX_SIZE_TRAIN by up to ``max_scale``.
    """

    def __init__(self, min_scale, max_scale):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        height, width = image.shape[:2]
        scale = self._rand_range(self.min_scale, self.max_scale)
        return T.ResizeTransform(height, width, round(height * scale), round(width * scale))


class RandomScaledCrop(T.Augmentation):
    """A ``crop_size`` x ``crop_size`` window of the image zoomed by a factor drawn from
    ``[min_scale, max_scale]``: training at (or near) native pixel size, whatever the image size.

    The window is cut first (``crop_size / scale`` pixels, at a random position) and only then
    resized, so a large image and its masks are never resized whole. Images smaller than the
    window are used whole (batching pads them), so no padding enters the masks.
    """

    def __init__(self, crop_size, min_scale, max_scale):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        height, width = image.shape[:2]
        scale = self._rand_range(self.min_scale, self.max_scale)
        window = max(1, round(self.crop_size / scale))
        crop_height, crop_width = min(window, height), min(window, width)
        y0 = np.random.randint(height - crop_height + 1)
        x0 = np.random.randint(width - crop_width + 1)
        return T.TransformList([
            T.CropTransform(x0, y0, crop_width, crop_height),
            T.ResizeTransform(crop_height, crop_width, max(1, round(crop_height * scale)),
                              max(1, round(crop_width * scale))),
        ])


class RandomGamma(T.Augmentation):
    """Gamma drawn log-uniformly from ``[min_gamma, max_gamma]`` (so 0.8..1.25 is symmetric)."""

    def __init__(self, min_gamma, max_gamma):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return GammaTransform(float(np.exp(self._rand_range(np.log(self.min_gamma),
                                                            np.log(self.max_gamma)))))


class RandomStain(T.Augmentation):
    """Stain jitter, per stain ``alpha ~ U(1 - sigma, 1 + sigma)``, ``beta ~ U(-sigma, sigma)``."""

    def __init__(self, sigma, channel_order):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        alpha = self._rand_range(1 - self.sigma, 1 + self.sigma, size=3)
        beta = self._rand_range(-self.sigma, self.sigma, size=3)
        return StainTransform(alpha, beta, self.channel_order)


class RandomElastic(T.Augmentation):
    """U-Net's elastic deformation: Gaussian displacements (std ``sigma`` pixels) on a coarse
    ``grid_size`` x ``grid_size`` grid of control points, upsampled bicubically to every pixel."""

    def __init__(self, grid_size, sigma):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        height, width = image.shape[:2]
        coarse = np.random.normal(0, self.sigma, size=(2, self.grid_size, self.grid_size))
        displacement = np.stack([
            cv2.resize(c.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
            for c in coarse
        ])
        return ElasticTransform(displacement)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def hflip(cfg):
    return T.RandomFlip(horizontal=True, vertical=False)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def vflip(cfg):
    return T.RandomFlip(horizontal=False, vertical=True)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def rot90(cfg):
    return RandomRot90()


@NUCLEI_AUGMENTATION_REGISTRY.register()
def scale(cfg):
    return RandomScale(*cfg.INPUT.NUCLEI_AUG.SCALE_RANGE)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def scaled_crop(cfg):
    return RandomScaledCrop(cfg.INPUT.NUCLEI_AUG.CROP_SIZE, *cfg.INPUT.NUCLEI_AUG.SCALE_RANGE)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def brightness(cfg):
    return T.RandomBrightness(*cfg.INPUT.NUCLEI_AUG.BRIGHTNESS_RANGE)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def contrast(cfg):
    return T.RandomContrast(*cfg.INPUT.NUCLEI_AUG.CONTRAST_RANGE)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def gamma(cfg):
    return RandomGamma(*cfg.INPUT.NUCLEI_AUG.GAMMA_RANGE)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def stain(cfg):
    check_choice("INPUT.FORMAT (the 'stain' augmentation needs colour)", cfg.INPUT.FORMAT,
                 ("BGR", "RGB"))
    return RandomStain(cfg.INPUT.NUCLEI_AUG.STAIN_SIGMA, cfg.INPUT.FORMAT)


@NUCLEI_AUGMENTATION_REGISTRY.register()
def elastic(cfg):
    if cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT != "bitmask":
        raise UserInputError(
            "The 'elastic' augmentation warps masks pixel by pixel and needs "
            f"INPUT.MASK_FORMAT 'bitmask' (got {cfg.INPUT.MASK_FORMAT!r})."
        )
    return RandomElastic(cfg.INPUT.NUCLEI_AUG.ELASTIC_GRID, cfg.INPUT.NUCLEI_AUG.ELASTIC_SIGMA)


def check_flips(cfg, names):
    """A flip named twice (INPUT.RANDOM_FLIP and NUCLEI_AUG) would still flip with p=0.5: refuse the
    ambiguity rather than hide it."""
    for name, direction in (("hflip", "horizontal"), ("vflip", "vertical")):
        if name in names and cfg.INPUT.RANDOM_FLIP == direction:
            raise UserInputError(
                f"INPUT.NUCLEI_AUG.NAMES has {name!r} and INPUT.RANDOM_FLIP is {direction!r}: "
                "the same flip is configured twice. Set INPUT.RANDOM_FLIP to 'none' or drop "
                f"{name!r}."
            )


def build_nuclei_augmentations(cfg, is_train):
    """detectron2's augmentations (INPUT.CROP, resize, INPUT.RANDOM_FLIP), then in training those
    named in INPUT.NUCLEI_AUG.NAMES, in that order."""
    augmentations = utils.build_augmentation(cfg, is_train)
    if not is_train:
        return augmentations
    if cfg.INPUT.CROP.ENABLED:
        augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    names = list(cfg.INPUT.NUCLEI_AUG.NAMES)
    registered = [n for n, _ in NUCLEI_AUGMENTATION_REGISTRY]
    for name in names:
        check_choice("INPUT.NUCLEI_AUG.NAMES entry", name, registered)
    check_flips(cfg, names)
    return augmentations + [NUCLEI_AUGMENTATION_REGISTRY.get(name)(cfg) for name in names]


def crop_window(transforms):
    """The region of the input image that a leading crop keeps, as (x0, y0, x1, y1) in input
    pixels, widened by a pixel for resampling; None when no crop comes before other geometry.

    Only resizes and no-ops may precede the crop: what it cuts away, later transforms never see.
    """
    scale_x = scale_y = 1.0
    for transform in transforms.transforms:
        if isinstance(transform, T.NoOpTransform):
            continue
        if isinstance(transform, T.ResizeTransform):
            scale_x *= transform.new_w / transform.w
            scale_y *= transform.new_h / transform.h
        elif isinstance(transform, T.CropTransform):
            return (transform.x0 / scale_x - 1, transform.y0 / scale_y - 1,
                    (transform.x0 + transform.w) / scale_x + 1,
                    (transform.y0 + transform.h) / scale_y + 1)
        else:
            return None
    return None


class NucleiDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper that decodes only the nuclei a training crop can hold.

    DSB2018 images carry hundreds of nuclei; decoding every mask at full image size to keep the
    few inside a 256-px crop cost most of a worker's time. A nucleus whose box misses the crop
    window comes out empty and is dropped after decoding anyway, so dropping it before is exact.
    """

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        window = crop_window(transforms)
        if window is not None:
            dataset_dict["annotations"] = [
                annotation for annotation in dataset_dict["annotations"]
                if _box_meets(annotation, window)
            ]
            if not dataset_dict["annotations"]:
                del dataset_dict["annotations"]
                dataset_dict["instances"] = self._no_nuclei(image_shape)
                return
        super()._transform_annotations(dataset_dict, transforms, image_shape)

    def _no_nuclei(self, image_shape):
        """What detectron2 makes of a crop whose nuclei all fell out: no instances, empty masks."""
        instances = Instances(image_shape, gt_boxes=Boxes(torch.zeros((0, 4))),
                              gt_classes=torch.zeros(0, dtype=torch.int64))
        if self.use_instance_mask:
            instances.gt_masks = (BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
                                  if self.instance_mask_format == "bitmask" else PolygonMasks([]))
        return instances


def _box_meets(annotation, window):
    x0, y0, x1, y1 = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    return x0 < window[2] and x1 > window[0] and y0 < window[3] and y1 > window[1]


def build_nuclei_train_mapper(cfg):
    """The nuclei mapper with the nuclei augmentations (for the train loader).

    Boxes are recomputed from the transformed masks: transformed box corners do not bound a nucleus
    after an elastic warp or a crop.
    """
    return NucleiDatasetMapper(cfg, is_train=True,
                               augmentations=build_nuclei_augmentations(cfg, True),
                               recompute_boxes=cfg.MODEL.MASK_ON)
