"""Nuclei data: synthetic generator, COCO conversion, dataset registration."""
from .datasets import datasets_root, register_all_nuclei, register_nuclei_coco

register_all_nuclei(datasets_root())
