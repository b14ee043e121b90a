"""asarm_jax: Any-Subset Autoregressive Models and exact Any-Subset Speculative Decoding in JAX/Flax."""
from asarm_jax import masks, sampling
from asarm_jax.cache import KVCache
from asarm_jax.infilling import infill, infill_many
from asarm_jax.loading import LoadedModel, load
from asarm_jax.model import ASARM, ModelConfig, cast_for_inference, empty_cache, init_params
from asarm_jax.sampling import Sampler, sample

__all__ = ["ASARM", "KVCache", "LoadedModel", "ModelConfig", "Sampler", "cast_for_inference",
           "empty_cache", "infill", "infill_many", "init_params", "load", "masks", "sample",
           "sampling"]
