"""Image files: which names count as images."""

# Extensions of the image files the tools read (prepare_nuclei, predict), lower case.
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
