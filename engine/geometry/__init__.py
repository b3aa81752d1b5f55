"""3D geometry of organised point clouds: background removal, resampling and descriptors (open3d, lazily)."""
