"""Geometry: 3D point clouds (background removal, resampling, descriptors; open3d lazily) and, in `polygons`,
the one mask <-> polygon conversion that annotation, export, the segmenter and its training share."""
