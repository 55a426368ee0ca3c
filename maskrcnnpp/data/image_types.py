"""Which kind of microscopy an image is: fluorescence, brightfield or H&E-stained tissue.

Nuclei look different in each, and models fail differently on them, so every prepared image
records its type and the evaluation reports each metric per type. The rule reads two numbers of
the 8-bit RGB image:

- background: the median grey level (mean of R, G, B). Fluorescence shows bright nuclei on a dark
  background; brightfield and stained tissue are imaged in transmitted light, on a light one.
- colourfulness: the mean over pixels of (max - min) over the three channels. Stains colour
  transmitted-light images; unstained brightfield stays grey.

On DSB2018 stage 1 (590 images) the two numbers separate the three types with wide gaps: all 476
fluorescence images have a background of at most 45 (grey or tinted alike), the transmitted-light
ones at least 128; of those, the 15 brightfield images have a colourfulness below 1, the 99 stained
ones above 10 (tests/test_prepare.py checks the rule on the real images where they are present).
"""
import numpy as np

FLUORESCENCE, BRIGHTFIELD, HE_STAINED = "fluorescence", "brightfield", "he_stained"
IMAGE_TYPES = (FLUORESCENCE, BRIGHTFIELD, HE_STAINED)  # the order of the reports
UNKNOWN = "unknown"  # an image whose COCO entry has no type (prepared by other tools)
# Thresholds of the rule, in 8-bit grey levels, in the middle of the gaps seen on DSB2018.
DARK_BACKGROUND = 100
COLOURFUL = 5.0


def image_type(rgb):
    """The type of an HxWx3 uint8 image (RGB or BGR: the rule is symmetric in the channels)."""
    if np.median(rgb.mean(axis=2)) < DARK_BACKGROUND:
        return FLUORESCENCE
    colourfulness = np.mean(rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2))
    return HE_STAINED if colourfulness >= COLOURFUL else BRIGHTFIELD
