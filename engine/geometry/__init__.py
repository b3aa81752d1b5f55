"""Geometry: 3D point clouds (background removal, resampling, descriptors; open3d lazily), depth maps as
offset- and scale-invariant geometry images (`depth_image`), and, in `polygons`, the one mask <-> polygon
conversion that annotation, export, the segmenter and its training share."""
