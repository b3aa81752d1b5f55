"""Defect-Gen (Defect Spectrum): one diffusion process over image channels plus one-hot mask channels, so every
generated image comes with its pixel mask. A large UNet with attention runs the early, noisy steps and a small one
without attention (trained on crops: local texture) the late ones, on one shared schedule of absolute timesteps
(trainers.defectgen.schedule). Torch-side artefact: a generator folder (trainers.defectgen.store), no ONNX."""
