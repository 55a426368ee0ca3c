#!/usr/bin/env python3
"""Make the README's picture of the napari plugin: its widget run on one image, in a napari
window on a virtual display.

    xvfb-run -a python3 scripts/napari_screenshot.py --config-file RUN/config.yaml \\
        --weights RUN/model_final.pth --image IMAGE.png --output docs/images/napari_widget.png

napari draws its canvas with OpenGL, which Qt's offscreen platform cannot host (Qt 6 refuses
QOpenGLWidget there), so the window is drawn on an X display: xvfb-run's virtual one (Debian:
apt-get install xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0). The picture is the whole
window (canvas_only=False), its colours reduced to a palette to keep the PNG small.
"""
import argparse
import os
import sys
import time

from PIL import Image

# The window's and the dock widget's sizes in pixels, and the longest a segmentation may take.
WINDOW, WIDGET_WIDTH = (1400, 760), 420
TIMEOUT_S = 600


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's YAML config")
    parser.add_argument("--weights", required=True, help="its trained checkpoint (.pth)")
    parser.add_argument("--image", required=True, help="the image to segment")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--tile-size", type=int, default=512,
                        help="TEST.TILE.SIZE; below the image's size, to show overlap-tile inference")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if not os.environ.get("DISPLAY"):
        sys.exit("No X display: run this under xvfb-run -a (see its docstring).")
    import napari
    from qtpy.QtWidgets import QApplication

    from maskrcnnpp.napari_plugin import CONFIG_FROM_FILE

    viewer = napari.Viewer(title="Mask R-CNN++ in napari")
    viewer.window.resize(*WINDOW)
    [layer] = viewer.open(args.image, plugin="napari")
    _, widget = viewer.window.add_plugin_dock_widget("maskrcnnpp", "Segment nuclei")
    widget.max_width = WIDGET_WIDTH  # long paths would widen the dock over the canvas
    widget.image.value = layer
    widget.config.value = CONFIG_FROM_FILE
    widget.config_file.value = args.config_file
    widget.weights.value = args.weights
    widget.tile_size.value = args.tile_size
    widget.score_points.value = True
    widget.start()
    started = time.monotonic()
    while widget.worker is None or not widget.segment_button.enabled:
        if time.monotonic() - started > TIMEOUT_S:
            sys.exit(f"The segmentation took over {TIMEOUT_S} s.")
        QApplication.processEvents()
        time.sleep(0.05)
    if f"{layer.name} nuclei" not in viewer.layers:
        sys.exit("The widget added no Labels layer; see napari's message above.")
    viewer.layers[f"{layer.name} scores"].visible = False  # listed, not drawn: 100 numbers clutter
    viewer.layers.selection.active = viewer.layers[f"{layer.name} nuclei"]
    viewer.reset_view()
    QApplication.processEvents()
    picture = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(picture[:, :, :3]).quantize(colors=256).save(args.output, optimize=True)
    nuclei = int(viewer.layers[f"{layer.name} nuclei"].data.max())
    print(f"Wrote {args.output} ({os.path.getsize(args.output) // 1024} KiB): {nuclei} nuclei "
          f"in {os.path.basename(args.image)}.")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
