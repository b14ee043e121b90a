"""asarm_jax: Any-Subset Autoregressive Models and exact Any-Subset Speculative Decoding in JAX/Flax."""
from asarm_jax import masks
from asarm_jax.cache import KVCache
from asarm_jax.model import ASARM, ModelConfig, empty_cache, init_params

__all__ = ["ASARM", "KVCache", "ModelConfig", "empty_cache", "init_params", "masks"]
