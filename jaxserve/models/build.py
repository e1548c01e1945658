"""Weights of a model file -> the family's Flax NNX model."""

from __future__ import annotations

from flax import nnx

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.loading.weights import ModelWeights, Tensors, layer_tensor_name, load_model_weights
from jaxserve.models.registry import family


def read_weights(source: Tensors, config: ModelConfig, fmt: WeightFormat) -> ModelWeights:
    """Every tensor the config's family reads, converted to `fmt`."""
    names = (
        family(config.architecture)
        .module()
        .layer_tensors(config, lambda name: layer_tensor_name(0, name) in source)
    )
    return load_model_weights(source, num_layers=config.num_layers, layer_tensors=names, fmt=fmt)


def build_model(config: ModelConfig, weights: ModelWeights) -> nnx.Module:
    """The config's family model class over `weights`."""
    return family(config.architecture).module().MODEL(config, weights)
