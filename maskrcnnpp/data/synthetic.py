"""Synthetic nuclei scenes: the built-in dataset, so that training and tests need no download.

Each scene is drawn from a seeded ``np.random.Generator``: nuclei outlines first (an instance
label map, touching but never overlapping), then an image rendered from the label map in one of
two modalities, fluorescence (DAPI-like, bright on dark) or brightfield (H&E-like, purple on
pink), with texture, blur, noise and uneven illumination.
"""

import dataclasses
import math
import os

import cv2
import numpy as np
from tqdm import tqdm

from maskrcnnpp import io_utils
from maskrcnnpp.data import coco_io
from maskrcnnpp.errors import UserInputError, check_choice

# Nuclei with fewer visible pixels than this are dropped: too small to annotate reliably.
MIN_NUCLEUS_PIXELS = 12
# Range of nucleus radii in pixels (radius of the circle of equal area).
RADIUS_RANGE = (4.0, 40.0)
# Range of a scene's typical radius, drawn log-uniformly; nuclei vary about it.
SCENE_RADIUS_RANGE = (4.5, 28.0)
# Range of the fraction of the image that a scene tries to cover with nuclei (sparse .. crowded).
COVERAGE_RANGE = (0.03, 0.45)
# A new nucleus is rejected when more than this fraction of its outline is already taken;
# below it, it keeps the free pixels only and so touches its neighbours with a flattened contact.
MAX_TAKEN_FRACTION = 0.2
MAX_NUCLEI_PER_SCENE = 400
# Candidate positions tried per nucleus wanted, so that crowded scenes fill up.
CANDIDATES_PER_NUCLEUS = 3
OUTLINE_VERTICES = 64
# cv2.fillPoly's fixed-point fraction bits: outlines are filled with sub-pixel precision.
FILL_SHIFT = 4


@dataclasses.dataclass(frozen=True)
class ShapeKind:
    """A family of nucleus outlines: an ellipse whose radius is perturbed by smooth harmonics."""

    aspect: tuple  # (min, max) ratio of the major to the minor axis
    wobble: tuple  # (min, max) relative amplitude of the radius harmonics


SHAPE_KINDS = {
    "round": ShapeKind(aspect=(1.0, 1.15), wobble=(0.0, 0.03)),
    "elliptical": ShapeKind(aspect=(1.3, 2.3), wobble=(0.0, 0.04)),
    "irregular": ShapeKind(aspect=(1.0, 1.8), wobble=(0.08, 0.18)),
}
# Harmonics of the outline radius; amplitudes fall as 1/k so that outlines stay smooth.
OUTLINE_HARMONICS = np.arange(2, 6)

# Optical density of each stain per unit amount, natural log, (R, G, B): transmitted light is
# exp(-sum of amount * density). Hematoxylin is Ruifrok & Johnston's (2001) vector; eosin is
# tuned so that a thin layer looks pink, as on H&E slides.
STAIN_DENSITY = {
    "hematoxylin": np.array([0.65, 0.70, 0.29], dtype=np.float32),
    "eosin": np.array([0.05, 0.85, 0.45], dtype=np.float32),
}
# Display colour of a fluorescence channel -> (probability, RGB): greyscale as most microscopy
# exports, or the blue that DAPI is usually shown in.
FLUORESCENCE_TINTS = {
    "grey": (0.75, np.array([1.0, 1.0, 1.0], dtype=np.float32)),
    "dapi_blue": (0.25, np.array([0.35, 0.55, 1.0], dtype=np.float32)),
}


def _draw_name(rng, table):
    """A key of ``table``, whose values are ``(probability, ...)`` tuples, drawn from ``rng``."""
    names = list(table)
    return names[rng.choice(len(names), p=[table[name][0] for name in names])]


def _nucleus_outlines(rng, centers, radii, kind_indices):
    """Polygons ``(N, OUTLINE_VERTICES, 2)`` of ``(x, y)`` points, one per center, radius and
    index into SHAPE_KINDS.

    Each ellipse keeps the area of a circle of its radius, so radii compare across kinds.
    """
    kinds = list(SHAPE_KINDS.values())
    aspect = rng.uniform(*np.array([k.aspect for k in kinds])[kind_indices].T)
    orientation = rng.uniform(0.0, math.pi, len(centers))
    wobble = rng.uniform(*np.array([k.wobble for k in kinds])[kind_indices].T)
    amplitudes = wobble[:, None] * rng.uniform(0.0, 2.0, (len(centers), len(OUTLINE_HARMONICS)))
    amplitudes *= 2.0 / OUTLINE_HARMONICS
    phases = rng.uniform(0.0, 2 * math.pi, amplitudes.shape)
    theta = np.linspace(0.0, 2 * math.pi, OUTLINE_VERTICES, endpoint=False)
    harmonics = np.cos(OUTLINE_HARMONICS[:, None] * theta + phases[:, :, None])
    r = radii[:, None] * (1.0 + np.einsum("nh,nhv->nv", amplitudes, harmonics))
    x = r * np.cos(theta) * np.sqrt(aspect)[:, None]
    y = r * np.sin(theta) / np.sqrt(aspect)[:, None]
    cos, sin = np.cos(orientation)[:, None], np.sin(orientation)[:, None]
    return np.stack(
        [centers[:, :1] + cos * x - sin * y, centers[:, 1:] + sin * x + cos * y], axis=-1
    )


def _add_nucleus(labels, outline, label):
    """Give ``label`` to the free pixels inside ``outline``; return whether the nucleus was kept.

    A nucleus is kept only if little of it is already taken, enough pixels remain and they form
    one piece, so every instance is a single connected region of at least MIN_NUCLEUS_PIXELS.
    """
    height, width = labels.shape
    x0, y0 = np.maximum(np.floor(outline.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(outline.max(axis=0)).astype(int) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return False
    inside = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    points = np.round((outline - (x0, y0)) * (1 << FILL_SHIFT)).astype(np.int32)
    cv2.fillPoly(inside, [points], 1, lineType=cv2.LINE_8, shift=FILL_SHIFT)
    inside = inside.astype(bool)
    region = labels[y0:y1, x0:x1]
    free = inside & (region == 0)
    num_free = np.count_nonzero(free)
    num_taken = np.count_nonzero(inside) - num_free
    if num_free < MIN_NUCLEUS_PIXELS or num_taken > MAX_TAKEN_FRACTION * (num_free + num_taken):
        return False
    if num_taken and cv2.connectedComponents(free.view(np.uint8), connectivity=4)[0] > 2:
        return False
    region[free] = label
    return True


def draw_nuclei(rng, height, width):
    """Instance label map of one scene: HxW int32, 0 background, nuclei 1..N in drawing order.

    The scene draws its typical radius, how crowded it is and its mix of shape kinds; nuclei
    are then tried at random positions until the scene holds the number it wants.
    """
    scene_radius = math.exp(rng.uniform(*np.log(SCENE_RADIUS_RANGE)))
    coverage = rng.uniform(*COVERAGE_RANGE)
    wanted = coverage * height * width / (math.pi * scene_radius**2)
    wanted = int(np.clip(round(wanted), 1, MAX_NUCLEI_PER_SCENE))
    num_candidates = CANDIDATES_PER_NUCLEUS * wanted
    kind_mix = rng.dirichlet(np.ones(len(SHAPE_KINDS)))
    kind_indices = rng.choice(len(SHAPE_KINDS), num_candidates, p=kind_mix)
    radii = np.clip(scene_radius * rng.lognormal(0.0, 0.2, num_candidates), *RADIUS_RANGE)
    centers = rng.uniform((0, 0), (width, height), (num_candidates, 2))

    labels = np.zeros((height, width), dtype=np.int32)
    count = 0
    for outline in _nucleus_outlines(rng, centers, radii, kind_indices):
        if _add_nucleus(labels, outline, count + 1):
            count += 1
            if count == wanted:
                break
    return labels


def _texture(rng, shape, sigma):
    """Zero-mean, unit-variance noise smoothed at ``sigma`` pixels: chromatin or tissue grain."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _low_frequency_field(rng, shape, cells):
    """A smooth field of about [-1, 1] varying over ``cells`` periods: illumination, stain density."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, shape[::-1], interpolation=cv2.INTER_CUBIC)


def _per_nucleus(values, labels):
    """Broadcast per-nucleus ``values`` (index 0 = label 1) to pixels; background gets 0."""
    return np.concatenate([[0.0], values]).astype(np.float32)[labels]


def _nucleus_depth(labels):
    """Relative depth inside each nucleus: distance to its outline over its radius, in [0, 1].

    Outlines include contacts with neighbours, so touching nuclei each get their own profile.
    The radius is that of the circle of equal area, which no inscribed distance exceeds.
    """
    as_float = labels.astype(np.float32)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    interior = (cv2.erode(as_float, cross) == as_float) & (cv2.dilate(as_float, cross) == as_float)
    interior &= labels > 0
    distance = cv2.distanceTransform(interior.view(np.uint8), cv2.DIST_L2, 3) + 0.5
    radii = np.sqrt(np.bincount(labels.ravel())[1:] / math.pi)
    depth = np.divide(
        distance, _per_nucleus(radii, labels), out=np.zeros_like(distance), where=labels > 0
    )
    return np.minimum(depth, 1.0)


def _render_fluorescence(rng, labels):
    """DAPI-like: dome-shaped bright nuclei on a dark field, with shot noise and read noise."""
    shape = labels.shape
    num_nuclei = int(labels.max())
    depth = _nucleus_depth(labels)
    # Projected thickness of a dome: 0 at the rim, 1 at the centre.
    thickness = np.sqrt(depth * (2.0 - depth))
    brightness = rng.uniform(0.15, 0.8) * rng.lognormal(0.0, 0.3, num_nuclei)
    chromatin = 1.0 + rng.uniform(0.05, 0.3) * _texture(rng, shape, rng.uniform(0.8, 2.0))
    dye = _per_nucleus(brightness, labels) * (0.45 + 0.55 * thickness) * chromatin
    illumination = 1.0 + rng.uniform(0.0, 0.35) * _low_frequency_field(rng, shape, 2)
    signal = (rng.uniform(0.0, 0.08) + dye) * illumination
    signal = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), rng.uniform(0.5, 1.5))
    signal = np.maximum(signal, 0.0)
    photons_at_full_scale = rng.uniform(30.0, 600.0)
    signal += np.sqrt(signal / photons_at_full_scale) * rng.standard_normal(shape, dtype=np.float32)
    signal += rng.uniform(0.002, 0.01) * rng.standard_normal(shape, dtype=np.float32)
    tint = FLUORESCENCE_TINTS[_draw_name(rng, FLUORESCENCE_TINTS)][1]
    return np.clip(signal[:, :, None] * tint * 255.0, 0, 255).round().astype(np.uint8)


def _render_brightfield(rng, labels):
    """H&E-like: hematoxylin nuclei (dark rim, coarse chromatin) in eosin-stained tissue.

    Colours follow Beer-Lambert absorption of the two stains, each jittered per scene as
    staining varies between labs; a scene with little eosin looks like a hematoxylin-only
    brightfield image (purple nuclei on near-white).
    """
    shape = labels.shape
    nuclei = labels > 0
    num_nuclei = int(labels.max())
    rim = (1.0 - _nucleus_depth(labels)) ** 4
    amount = rng.uniform(0.9, 2.0) * rng.lognormal(0.0, 0.2, num_nuclei)
    chromatin = 1.0 + rng.uniform(0.1, 0.35) * _texture(rng, shape, rng.uniform(0.8, 2.0))
    hematoxylin = _per_nucleus(amount, labels) * (0.8 + 0.4 * rim) * chromatin
    hematoxylin += rng.uniform(0.02, 0.12) * (1.0 + 0.5 * _low_frequency_field(rng, shape, 5))

    # Cytoplasm: denser eosin within about a nucleus diameter of the nuclei.
    diameter = 2 * math.sqrt(np.count_nonzero(nuclei) / max(num_nuclei, 1) / math.pi)
    cytoplasm = cv2.blur(nuclei.astype(np.float32), (round(2 * diameter) + 1,) * 2)
    tissue = 0.5 + 0.3 * _low_frequency_field(rng, shape, 6) + 0.15 * _texture(rng, shape, 2.0)
    tissue += rng.uniform(0.0, 1.0) * cytoplasm
    eosin = rng.uniform(0.0, 0.8) * np.clip(tissue, 0.0, None) * np.where(nuclei, 0.8, 1.0)

    density = np.zeros(shape + (3,), dtype=np.float32)
    for stain, stain_amount in (("hematoxylin", hematoxylin), ("eosin", eosin)):
        channel_jitter = rng.lognormal(0.0, 0.1, 3).astype(np.float32)
        density += stain_amount[:, :, None] * (STAIN_DENSITY[stain] * channel_jitter)
    density = cv2.GaussianBlur(density, (0, 0), rng.uniform(0.4, 1.2))
    illumination = 1.0 + rng.uniform(0.0, 0.1) * _low_frequency_field(rng, shape, 2)
    image = (255.0 * rng.uniform(0.9, 1.0)) * illumination[:, :, None] * np.exp(-density)
    image += rng.uniform(1.0, 4.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8)


# Modality name -> (probability of a scene, renderer from a label map to an HxWx3 uint8 image).
MODALITIES = {
    "fluorescence": (0.6, _render_fluorescence),
    "brightfield": (0.4, _render_brightfield),
}


def render_scene(rng, height=256, width=256, modality=None):
    """One synthetic scene: ``(image, labels)``, an HxWx3 uint8 RGB image and its HxW int32
    instance label map (0 background, nuclei 1..N, no overlaps).

    ``modality`` ("fluorescence" or "brightfield") is drawn from ``rng`` unless given.
    """
    if modality is None:
        modality = _draw_name(rng, MODALITIES)
    check_choice("modality", modality, MODALITIES)
    labels = draw_nuclei(rng, height, width)
    return MODALITIES[modality][1](rng, labels), labels


def _check_integer(key, value, minimum):
    """Raise UserInputError unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserInputError(f"{key}={value!r} is not valid; give an integer >= {minimum}.")


def generate_synthetic_dataset(out_dir, num_images, seed, image_size=(256, 256), description=None):
    """Write a synthetic nuclei set in COCO instance format and return ``out_dir``.

    Layout: ``out_dir/images/00000.png ...`` and ``out_dir/annotations.json`` (file names
    relative to ``images/``). Image ``i`` depends only on ``(seed, i)``, so a set is reproducible
    and its first images do not change when it grows. ``image_size`` is ``(height, width)``.
    The set is written into a temporary folder renamed at the end, so ``out_dir`` exists only
    once complete; if it appears meanwhile (another worker generating the same set), that copy
    is kept.
    """
    _check_integer("num_images", num_images, 1)
    _check_integer("seed", seed, 0)
    if np.shape(image_size) != (2,):
        raise UserInputError(f"image_size={image_size!r} is not valid; give (height, width).")
    height, width = image_size
    _check_integer("image height", height, 1)
    _check_integer("image width", width, 1)
    if description is None:
        description = f"synthetic nuclei, seed {seed}, {num_images} images of {height}x{width}"

    images, annotations = [], []
    with io_utils.atomic_directory(out_dir) as tmp_dir:
        os.makedirs(os.path.join(tmp_dir, "images"))
        for index in tqdm(range(num_images), desc="synthetic nuclei", unit="image"):
            image, labels = render_scene(np.random.default_rng([seed, index]), height, width)
            entry, image_annotations = coco_io.write_sample(
                os.path.join(tmp_dir, "images"), f"{index:05d}.png", image, labels,
                image_id=index + 1, first_annotation_id=len(annotations) + 1,
            )
            images.append(entry)
            annotations += image_annotations
        io_utils.write_json(
            coco_io.coco_dict(images, annotations, description),
            os.path.join(tmp_dir, "annotations.json"),
        )
    return out_dir
