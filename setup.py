"""Mask R-CNN++: UNet++-style dense pyramid necks for detectron2, for nuclei instance segmentation.

torch, torchvision and detectron2 are installed by scripts/install.sh (detectron2 is not on the
package registry and must be built against the installed torch), so they are not listed here; nor
is OpenCV, as in detectron2: its several distributions (opencv-python, -headless, -contrib) clash,
so the installer adds opencv-python-headless only where no cv2 imports.
"""
from setuptools import find_packages, setup

setup(
    name="maskrcnnpp",
    version="0.1.0",
    description="Mask R-CNN++: dense nested (UNet++) feature pyramids for detectron2",
    python_requires=">=3.9",
    packages=find_packages(include=["maskrcnnpp", "maskrcnnpp.*"]),
    # The YAML and LazyConfig configs ship inside the package (maskrcnnpp/configs links to ./configs), so the
    # model zoo finds them after a non-editable install, from any working directory.
    package_data={"maskrcnnpp": ["configs/*.yaml", "configs/lazy/*.py", "napari.yaml"]},
    install_requires=[
        "numpy",
        "scipy",
        "pycocotools",
        "fvcore",
        "matplotlib",
        "tabulate",
        "tqdm",
        "Pillow",
    ],
    # export: ONNX files written and run by tools/export_model.py; the tests check that export too.
    # napari: the napari plugin (maskrcnnpp/napari_plugin.py) with napari's default Qt binding,
    # and pytest-qt, which napari's make_napari_viewer fixture needs to test it (tests/test_napari.py).
    extras_require={
        "export": ["onnx", "onnxruntime"],
        "test": ["pytest", "onnx", "onnxruntime"],
        "napari": ["napari[qt]>=0.9", "magicgui", "pytest-qt"],
    },
    # napari finds the plugin through its npe2 manifest, beside the package's __init__.py so that
    # finding it imports nothing (the plugin module, and torch with it, loads when the widget opens).
    entry_points={"napari.manifest": ["maskrcnnpp = maskrcnnpp:napari.yaml"]},
)
