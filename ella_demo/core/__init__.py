"""Running the models: the connector, text encoding, the denoising loop and its extension points.

Imports nothing from the other subpackages, so everything else can build on it.
"""
