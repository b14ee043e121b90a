"""Import and export of Hugging Face XLNet checkpoints (`XLNetLMHeadModel`).

An AS-ARM is XLNet's two-stream transformer, so a Hugging Face checkpoint maps one to one onto our
parameter tree (see `model.init_params`):

  HF name (XLNetLMHeadModel)                        ours
  transformer.word_embedding.weight [V, M]          embedding [V, M] (also the tied LM head)
  transformer.mask_emb [1, 1, M]                    mask_emb [M]
  lm_loss.bias [V]                                  lm_bias [V]
  transformer.layer.{i}.rel_attn.{q,k,v,o,r}        layer_{i}/attention/{q,k,v,o,r} [M, H, D]
  transformer.layer.{i}.rel_attn.r_{w,r}_bias       layer_{i}/attention/r_{w,r}_bias [H, D]
  transformer.layer.{i}.rel_attn.layer_norm         layer_{i}/attention/layer_norm/{scale,bias}
  transformer.layer.{i}.ff.layer_{1,2}.weight       layer_{i}/ff/layer_{1,2}/kernel (transposed)
  transformer.layer.{i}.ff.layer_{1,2}.bias         layer_{i}/ff/layer_{1,2}/bias
  transformer.layer.{i}.ff.layer_norm               layer_{i}/ff/layer_norm/{scale,bias}

With `perm_mask = 1 - query_mask` and `target_mapping` = identity, an HF model in eval mode gives
the logits of `ASARM.__call__` (HF's content stream uses `perm_mask` with its diagonal cleared,
which is exactly our content mask, since ours equals the query mask plus the diagonal).

XLNet settings and how they are treated:
- `attn_type` must be 'bi' ('uni' is Transformer-XL's causal mask; ours come from orders).
- `clamp_len > 0` is rejected unless it is >= max_len - 1, where clamping never applies.
- `bi_data` is a pre-training input pipeline (HF then feeds reversed positions to half of the
  batch); it is ignored, the converted model always uses forward relative positions.
- `untie_r=False` (biases shared by all layers) is supported: a shared `transformer.r_w_bias` /
  `transformer.r_r_bias` ([H, D] or [L, H, D]) is copied into every layer.
- `mem_len`, `reuse_len`, `use_mems_*` (recurrence memory) and `same_length` (only read for 'uni')
  are ignored.
- Segment embeddings (`seg_embed`, `r_s_bias`) are dropped: our model has no segment term, so HF
  matches it only with `token_type_ids=None`. Export writes zeros for them.
- A query row that may attend to nothing (the first token of an empty prompt) gets a zero attention
  output in our model, whereas HF attends uniformly to every key; the two differ on that row only.
- An untied LM head (`lm_loss.weight` different from the word embedding) is rejected.

Loading from a directory reads `config.json` and `model.safetensors` (or its sharded index)
directly and needs neither torch nor transformers (a directory with only `pytorch_model.bin` needs
torch); passing a model instance and exporting need both.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from asarm_jax.model import ModelConfig

_DEFAULT_MAX_LEN = 512
# The XLNet sentencepiece vocabulary (xlnet-{base,large}-cased) puts <mask> at id 6.
_XLNET_VOCAB_SIZE = 32000
_XLNET_MASK_TOKEN_ID = 6
_FROM_HF_ACTIVATION = {
    "gelu": "gelu",  # HF's "gelu" is the exact erf form.
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_SEGMENT_WEIGHT = re.compile(r"transformer\.(layer\.\d+\.rel_attn\.)?(seg_embed|r_s_bias)")
_TIED_HEAD = "lm_loss.weight"
_EMBEDDING = "transformer.word_embedding.weight"
_TORCH_WEIGHTS = "pytorch_model.bin"


@dataclasses.dataclass(frozen=True)
class _Weight:
  """One HF tensor and where it lives in our parameter tree."""
  hf_name: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transpose: bool = False

  def to_ours(self, value: np.ndarray) -> np.ndarray:
    return value.T if self.transpose else value.reshape(self.shape)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    return value.T if self.transpose else value.reshape(self.hf_shape)


def _weights(cfg: ModelConfig) -> list[_Weight]:
  """Every weight of an XLNetLMHeadModel that we keep, in HF naming."""
  m, h, d, f, v = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_inner, cfg.vocab_size
  weights = [
      _Weight(_EMBEDDING, ("embedding",), (v, m), (v, m)),
      _Weight("transformer.mask_emb", ("mask_emb",), (1, 1, m), (m,)),
      _Weight("lm_loss.bias", ("lm_bias",), (v,), (v,)),
  ]
  for i in range(cfg.n_layers):
    attn, ours_attn = f"transformer.layer.{i}.rel_attn", (f"layer_{i}", "attention")
    for name in ("q", "k", "v", "o", "r"):
      weights.append(_Weight(f"{attn}.{name}", ours_attn + (name,), (m, h, d), (m, h, d)))
    for name in ("r_w_bias", "r_r_bias"):
      weights.append(_Weight(f"{attn}.{name}", ours_attn + (name,), (h, d), (h, d)))
    ff, ours_ff = f"transformer.layer.{i}.ff", (f"layer_{i}", "ff")
    for hf_prefix, path in ((f"{attn}.layer_norm", ours_attn), (f"{ff}.layer_norm", ours_ff)):
      weights.append(_Weight(f"{hf_prefix}.weight", path + ("layer_norm", "scale"), (m,), (m,)))
      weights.append(_Weight(f"{hf_prefix}.bias", path + ("layer_norm", "bias"), (m,), (m,)))
    weights += [
        _Weight(f"{ff}.layer_1.weight", ours_ff + ("layer_1", "kernel"), (f, m), (m, f), True),
        _Weight(f"{ff}.layer_1.bias", ours_ff + ("layer_1", "bias"), (f,), (f,)),
        _Weight(f"{ff}.layer_2.weight", ours_ff + ("layer_2", "kernel"), (m, f), (f, m), True),
        _Weight(f"{ff}.layer_2.bias", ours_ff + ("layer_2", "bias"), (m,), (m,)),
    ]
  return weights


def load_hf_xlnet(model_or_dir: Any, *, mask_token_id: int | None = None,
                  max_len: int | None = None) -> tuple[ModelConfig, dict]:
  """Converts a Hugging Face XLNet LM into an AS-ARM config and parameters.

  Args:
    model_or_dir: a transformers `XLNetLMHeadModel` or the path of a directory written by its
      `save_pretrained` (config.json + safetensors or pytorch_model.bin).
    mask_token_id: the id of the mask token. When None it is taken from the HF config's
      `mask_token_id`, else from `<mask>` in the directory's tokenizer_config.json, else from the
      XLNet vocabulary convention (id 6 when vocab_size is 32000); otherwise it must be given.
    max_len: the longest sequence the converted model accepts. When None: the `asarm_max_len` entry
      that `export_hf_xlnet` writes, else 512.

  Returns:
    (ModelConfig, params) with params a nested dict of float32 arrays shaped like `init_params`.

  Raises:
    ValueError: naming an unsupported setting, a missing, unexpected or misshapen weight, or a mask
      token id that cannot be determined.
    FileNotFoundError: if the directory lacks config.json or safetensors weights.
  """
  if isinstance(model_or_dir, (str, os.PathLike)):
    directory = pathlib.Path(model_or_dir)
    hf_config, files = find_directory_files(directory)
  elif hasattr(model_or_dir, "state_dict") and hasattr(model_or_dir, "config"):
    directory, files = None, []
    hf_config = model_or_dir.config.to_dict()
  else:
    raise TypeError("model_or_dir must be a transformers XLNetLMHeadModel or the path of a "
                    f"save_pretrained directory; got {type(model_or_dir).__name__}")
  if mask_token_id is None:
    mask_token_id = _default_mask_token_id(hf_config, directory)
  # The config is checked before any weight is read.
  cfg = config_from_hf(hf_config, mask_token_id, max_len)
  tensors = (_numpy_state(model_or_dir.state_dict()) if directory is None
             else _read_weights(files))
  return cfg, _params_from_hf(cfg, tensors)


def export_hf_xlnet(cfg: ModelConfig, params: Mapping, out_dir: str | os.PathLike):
  """Writes an AS-ARM as a Hugging Face `XLNetLMHeadModel` with `save_pretrained` (safetensors).

  The saved config holds `mask_token_id` and `asarm_max_len` so that `load_hf_xlnet` recovers `cfg`;
  weights are stored in float32, segment parameters are zero, no memory is used at evaluation
  (`use_mems_eval=False`), and pad/bos/eos ids are left unset (they are not part of ModelConfig).

  Args:
    cfg: the model's config; HF XLNet requires n_heads * d_head == d_model.
    params: parameters shaped like `init_params(cfg, ...)`.
    out_dir: the directory to write.

  Returns:
    The exported `XLNetLMHeadModel`, in eval mode.

  Raises:
    ValueError: if the config cannot be expressed in XLNet or a parameter is missing or misshapen.
  """
  import torch
  import transformers

  if cfg.n_heads * cfg.d_head != cfg.d_model:
    raise ValueError(f"HF XLNet requires n_heads * d_head == d_model; got n_heads={cfg.n_heads}, "
                     f"d_head={cfg.d_head}, d_model={cfg.d_model}")
  hf_config = transformers.XLNetConfig(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
      d_head=cfg.d_head, d_inner=cfg.d_inner, ff_activation=_TO_HF_ACTIVATION[cfg.ff_activation],
      attn_type="bi", initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps,
      dropout=cfg.dropout, mem_len=None, reuse_len=None, use_mems_eval=False,
      use_mems_train=False, bi_data=False, clamp_len=-1, same_length=False, untie_r=True,
      pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
      mask_token_id=cfg.mask_token_id, asarm_max_len=cfg.max_len)
  state = {}
  for weight in _weights(cfg):
    value = _lookup(params, weight.path)
    if tuple(value.shape) != weight.shape:
      raise ValueError(f"parameter {'/'.join(weight.path)} has shape {tuple(value.shape)}, "
                       f"expected {weight.shape}")
    state[weight.hf_name] = weight.to_hf(np.asarray(value, np.float32))
  state[_TIED_HEAD] = state[_EMBEDDING]
  unused_segments = np.zeros((cfg.n_heads, cfg.d_head), np.float32)  # [H, D]
  for i in range(cfg.n_layers):
    state[f"transformer.layer.{i}.rel_attn.r_s_bias"] = unused_segments
    state[f"transformer.layer.{i}.rel_attn.seg_embed"] = np.stack([unused_segments] * 2)
  model = transformers.XLNetLMHeadModel(hf_config)
  model.load_state_dict({name: torch.tensor(value) for name, value in state.items()}, strict=True)
  model.eval()
  model.save_pretrained(out_dir)
  return model


def _lookup(params: Mapping, path: tuple[str, ...]):
  node = params
  for depth, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      raise ValueError(f"parameter {'/'.join(path[:depth + 1])} is missing")
    node = node[key]
  return node


def _numpy_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Float32 numpy tensors of a torch state dict."""
  return {name: value.detach().cpu().float().numpy() for name, value in state.items()}


def find_directory_files(directory: pathlib.Path) -> tuple[dict, list[pathlib.Path]]:
  """The config dict of a `save_pretrained` directory and its weight files (not read yet).

  Raises:
    FileNotFoundError: not a directory, or no config.json or weight files in it.
    ValueError: config.json is not valid JSON.
  """
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory} is not a directory: load_hf_xlnet expects a "
                            "save_pretrained directory (config.json + model.safetensors)")
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found: expected a save_pretrained directory")
  single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
  if single.is_file():
    files = [single]
  elif index.is_file():
    files = sorted({directory / name
                    for name in json.loads(index.read_text())["weight_map"].values()})
  elif (directory / _TORCH_WEIGHTS).is_file():
    files = [directory / _TORCH_WEIGHTS]
  else:
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory} "
                            f"(nor {_TORCH_WEIGHTS}): there are no weights to load")
  try:
    return json.loads(config_path.read_text()), files
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path} is not valid JSON: {e}") from e


def _read_weights(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
  """Float32 numpy tensors of safetensors files, or of one pytorch_model.bin (needs torch)."""
  if files[0].name == _TORCH_WEIGHTS:
    import torch  # pylint: disable=g-import-not-at-top

    return _numpy_state(torch.load(files[0], map_location="cpu", weights_only=True))
  from safetensors.flax import load_file  # Handles bfloat16, which numpy lacks.

  tensors = {}
  for file in files:
    tensors.update({name: np.asarray(value, np.float32)
                    for name, value in load_file(file).items()})
  return tensors


def _default_mask_token_id(hf_config: Mapping, directory: pathlib.Path | None) -> int:
  if hf_config.get("mask_token_id") is not None:
    return int(hf_config["mask_token_id"])
  tokenizer_config = None if directory is None else directory / "tokenizer_config.json"
  if tokenizer_config is not None and tokenizer_config.is_file():
    values = json.loads(tokenizer_config.read_text())
    mask_token = values.get("mask_token", "<mask>")
    for token_id, token in values.get("added_tokens_decoder", {}).items():
      if token.get("content") == mask_token:
        return int(token_id)
  if hf_config.get("vocab_size") == _XLNET_VOCAB_SIZE:
    return _XLNET_MASK_TOKEN_ID
  raise ValueError("cannot determine the mask token id: the HF config has no mask_token_id, no "
                   "tokenizer_config.json names <mask>, and the vocabulary is not XLNet's; pass "
                   "load_hf_xlnet(..., mask_token_id=...)")


def config_from_hf(hf: Mapping, mask_token_id: int, max_len: int | None = None) -> ModelConfig:
  """Our ModelConfig from an XLNetConfig dict, rejecting settings we cannot reproduce (ValueError
  naming the setting); `max_len` as in `load_hf_xlnet`."""
  def require(key):
    if hf.get(key) is None:
      raise ValueError(f"the HF config has no {key!r}")
    return hf[key]

  if hf.get("model_type", "xlnet") != "xlnet":
    raise ValueError(f"model_type={hf['model_type']!r} is not supported; expected 'xlnet'")
  if hf.get("attn_type", "bi") != "bi":
    raise ValueError(f"attn_type={hf['attn_type']!r} is not supported; only 'bi' (attention is "
                     "restricted by order masks, not by a causal mask)")
  activation = hf.get("ff_activation", "gelu")
  if activation not in _FROM_HF_ACTIVATION:
    raise ValueError(f"ff_activation={activation!r} is not supported; "
                     f"supported: {sorted(_FROM_HF_ACTIVATION)}")
  if max_len is None:
    max_len = hf.get("asarm_max_len") or _DEFAULT_MAX_LEN
  clamp_len = hf.get("clamp_len", -1)
  if clamp_len is not None and 0 < clamp_len < max_len - 1:
    raise ValueError(f"clamp_len={clamp_len} is not supported (relative distances are not "
                     f"clamped); only clamp_len <= 0 or >= max_len - 1 = {max_len - 1}")
  vocab_size = hf.get("vocab_size", hf.get("n_token"))
  if vocab_size is None:
    raise ValueError("the HF config has no 'vocab_size'")
  d_model, n_heads = require("d_model"), require("n_head")
  return ModelConfig(
      vocab_size=vocab_size, mask_token_id=mask_token_id, d_model=d_model,
      n_layers=require("n_layer"), n_heads=n_heads, d_head=hf.get("d_head") or d_model // n_heads,
      d_inner=require("d_inner"), ff_activation=_FROM_HF_ACTIVATION[activation],
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("dropout", 0.1),
      max_len=max_len, initializer_range=hf.get("initializer_range", 0.02))


def _params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict:
  """Our parameter tree from HF tensors, checking names and shapes."""
  tensors = _untie_relative_biases(cfg, tensors)
  params: dict = {}
  for weight in _weights(cfg):
    if weight.hf_name not in tensors:
      raise ValueError(f"weight {weight.hf_name!r} is missing from the HF checkpoint "
                       "(expected an XLNetLMHeadModel)")
    value = tensors[weight.hf_name]
    if tuple(value.shape) != weight.hf_shape:
      raise ValueError(f"weight {weight.hf_name!r} has shape {tuple(value.shape)}, "
                       f"expected {weight.hf_shape}")
    node = params
    for key in weight.path[:-1]:
      node = node.setdefault(key, {})
    node[weight.path[-1]] = jnp.asarray(weight.to_ours(value), cfg.storage_dtype)
  if _TIED_HEAD in tensors and not np.array_equal(tensors[_TIED_HEAD], tensors[_EMBEDDING]):
    raise ValueError(f"weight {_TIED_HEAD!r} differs from {_EMBEDDING!r}: an untied LM head is not "
                     "supported")
  known = {weight.hf_name for weight in _weights(cfg)} | {_TIED_HEAD}
  unexpected = sorted(name for name in tensors
                      if name not in known and not _SEGMENT_WEIGHT.fullmatch(name))
  if unexpected:
    raise ValueError(f"unexpected weights in the HF checkpoint: {unexpected}")
  return params


def _untie_relative_biases(cfg: ModelConfig, tensors: dict[str, np.ndarray]
                           ) -> dict[str, np.ndarray]:
  """Copies biases shared by all layers (untie_r=False) into per-layer entries."""
  tensors = dict(tensors)
  for name in ("r_w_bias", "r_r_bias"):
    shared = tensors.pop(f"transformer.{name}", None)
    if shared is None:
      continue
    full = (cfg.n_layers, cfg.n_heads, cfg.d_head)
    if tuple(shared.shape) not in (full[1:], full):
      raise ValueError(f"weight 'transformer.{name}' has shape {tuple(shared.shape)}, expected "
                       f"{full[1:]} or {full}")
    per_layer = np.broadcast_to(shared, full)  # [L, H, D]
    for i in range(cfg.n_layers):
      tensors.setdefault(f"transformer.layer.{i}.rel_attn.{name}", per_layer[i])
  return tensors
