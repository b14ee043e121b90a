"""HF XLNet import/export: logit parity with transformers' XLNetLMHeadModel, round trips, errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from asarm_jax import ModelConfig, masks  # noqa: E402
from asarm_jax.convert_hf import export_hf_xlnet, load_hf_xlnet  # noqa: E402
from _hf_testlib import (  # noqa: E402
    LENGTH, MASK_ID, TOLERANCE, VOCAB, max_logit_diff, random_hf_model, random_params, random_problem,
    zero_params)


@pytest.fixture(scope="module")
def hf_model():
  return random_hf_model()


@pytest.fixture(scope="module")
def converted(hf_model):
  return load_hf_xlnet(hf_model, mask_token_id=MASK_ID)


@pytest.mark.parametrize("seed,num_prompt", [(0, 1), (1, 3), (2, 5), (3, LENGTH - 1), (4, 1)])
def test_logits_match_hf(seed, num_prompt, hf_model, converted):
  cfg, params = converted
  diff = max_logit_diff(cfg, params, hf_model, seed, num_prompt)
  print(f"parity seed={seed} num_prompt={num_prompt}: max |logit diff| = {diff:.2e}")
  assert diff <= TOLERANCE


def test_empty_prompt_differs_only_on_the_first_rank(hf_model, converted):
  """With no prompt the rank-0 query row sees nothing: ours is zero attention, HF's is uniform."""
  cfg, params = converted
  diff = max_logit_diff(cfg, params, hf_model, seed=5, num_prompt=0, skip_rank=0)
  print(f"parity num_prompt=0 (rank-0 row excluded): max |logit diff| = {diff:.2e}")
  assert diff <= TOLERANCE


@pytest.mark.parametrize("num_prompt", [0, 1, 4, LENGTH])
def test_hf_content_mask_is_ours(num_prompt):
  """HF's content mask is perm_mask with its diagonal cleared; ours is the query mask | diagonal."""
  _, ranks = random_problem(6, num_prompt)
  content, query = masks.density_masks(ranks, num_prompt)
  eye = jnp.eye(LENGTH, dtype=bool)
  np.testing.assert_array_equal(content, query | eye)
  perm_mask = 1.0 - np.asarray(query, np.float32)
  hf_content_blocked = (perm_mask - np.eye(LENGTH, dtype=np.float32)) > 0  # HF's non_tgt_mask
  np.testing.assert_array_equal(hf_content_blocked, ~np.asarray(content))


@pytest.mark.parametrize("hf_activation,ours", [("gelu_new", "gelu_tanh"), ("relu", "relu"),
                                                ("silu", "silu")])
def test_activations_match_hf(hf_activation, ours):
  model = random_hf_model(seed=1, ff_activation=hf_activation)
  cfg, params = load_hf_xlnet(model, mask_token_id=MASK_ID)
  assert cfg.ff_activation == ours
  diff = max_logit_diff(cfg, params, model, seed=7, num_prompt=2)
  print(f"parity ff_activation={hf_activation}: max |logit diff| = {diff:.2e}")
  assert diff <= TOLERANCE


def test_converted_tree_matches_init_params(converted):
  cfg, params = converted
  reference = zero_params(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(reference)
  for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype


def test_config_fields(converted):
  cfg, _ = converted
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_inner) == (
      VOCAB, 32, 2, 4, 8, 64)
  assert (cfg.ff_activation, cfg.mask_token_id, cfg.max_len, cfg.dropout) == (
      "gelu", MASK_ID, 512, 0.0)


def test_export_round_trip(tmp_path):
  cfg = ModelConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, d_model=32, n_layers=2, n_heads=4,
                    d_head=8, d_inner=48, ff_activation="gelu_tanh", max_len=64)
  params = random_params(cfg, seed=3)
  exported = export_hf_xlnet(cfg, params, tmp_path)
  loaded_cfg, loaded = load_hf_xlnet(tmp_path)
  assert loaded_cfg == cfg
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(ours, theirs)
  reloaded = transformers.XLNetLMHeadModel.from_pretrained(tmp_path).eval()
  for name, model in (("exported", exported), ("reloaded", reloaded)):
    diff = max_logit_diff(cfg, params, model, seed=8, num_prompt=3)
    print(f"parity {name} HF model: max |logit diff| = {diff:.2e}")
    assert diff <= TOLERANCE


def _write_checkpoint(directory, config, tensors):
  directory.mkdir(exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  safetensors_numpy.save_file(
      {name: np.ascontiguousarray(value) for name, value in tensors.items()},
      directory / "model.safetensors")
  return directory


def _checkpoint_parts(model):
  config = model.config.to_dict()
  tensors = {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}
  return config, tensors


def test_shared_relative_biases_are_copied_into_every_layer(tmp_path, hf_model, converted):
  config, tensors = _checkpoint_parts(hf_model)
  shared = {name: tensors[f"transformer.layer.0.rel_attn.{name}"] for name in ("r_w_bias",
                                                                               "r_r_bias")}
  for i in range(2):
    for name in shared:
      del tensors[f"transformer.layer.{i}.rel_attn.{name}"]
  tensors.update({f"transformer.{name}": value for name, value in shared.items()})
  _, params = load_hf_xlnet(_write_checkpoint(tmp_path / "ckpt", dict(config, untie_r=False),
                                              tensors), mask_token_id=MASK_ID)
  for i in range(2):
    for name, value in shared.items():
      np.testing.assert_array_equal(params[f"layer_{i}"]["attention"][name], value)
  np.testing.assert_array_equal(params["layer_1"]["attention"]["q"],
                                converted[1]["layer_1"]["attention"]["q"])


@pytest.mark.parametrize("setting", [dict(bi_data=True), dict(same_length=True),
                                     dict(mem_len=16, reuse_len=4), dict(clamp_len=600)])
def test_ignored_settings_are_accepted(tmp_path, hf_model, setting):
  config, tensors = _checkpoint_parts(hf_model)
  directory = _write_checkpoint(tmp_path / "ckpt", dict(config, **setting), tensors)
  cfg, _ = load_hf_xlnet(directory, mask_token_id=MASK_ID)
  assert cfg.max_len == 512


@pytest.mark.parametrize("setting,message", [
    (dict(attn_type="uni"), "attn_type"),
    (dict(clamp_len=100), "clamp_len"),
    (dict(ff_activation="tanh"), "ff_activation"),
    (dict(model_type="bert"), "model_type"),
    (dict(d_inner=None), "d_inner"),
])
def test_unsupported_settings_are_rejected(tmp_path, hf_model, setting, message):
  config, tensors = _checkpoint_parts(hf_model)
  directory = _write_checkpoint(tmp_path / "ckpt", dict(config, **setting), tensors)
  with pytest.raises(ValueError, match=message):
    load_hf_xlnet(directory, mask_token_id=MASK_ID)


def _drop(name):
  def edit(tensors):
    del tensors[name]
  return edit


def _reshape(name):
  def edit(tensors):
    tensors[name] = tensors[name][..., :-1].copy()
  return edit


def _add(name):
  def edit(tensors):
    tensors[name] = np.zeros(3, np.float32)
  return edit


def _untie(tensors):
  tensors["lm_loss.weight"] = tensors["lm_loss.weight"] + 1.0


@pytest.mark.parametrize("edit,message", [
    (_drop("transformer.layer.1.ff.layer_2.bias"), "transformer.layer.1.ff.layer_2.bias"),
    (_drop("lm_loss.bias"), "lm_loss.bias"),
    (_reshape("transformer.layer.0.rel_attn.r"), "transformer.layer.0.rel_attn.r'"),
    (_add("sequence_summary.summary.bias"), "sequence_summary.summary.bias"),
    (_untie, "untied LM head"),
])
def test_bad_weights_are_named(tmp_path, hf_model, edit, message):
  config, tensors = _checkpoint_parts(hf_model)
  edit(tensors)
  with pytest.raises(ValueError, match=message):
    load_hf_xlnet(_write_checkpoint(tmp_path / "ckpt", config, tensors), mask_token_id=MASK_ID)


def test_segment_weights_are_optional(tmp_path, hf_model):
  config, tensors = _checkpoint_parts(hf_model)
  tensors = {name: value for name, value in tensors.items()
             if not name.endswith(("seg_embed", "r_s_bias"))}
  cfg, _ = load_hf_xlnet(_write_checkpoint(tmp_path / "ckpt", config, tensors),
                         mask_token_id=MASK_ID)
  assert cfg.n_layers == 2


def test_mask_token_id_resolution(tmp_path, hf_model):
  config, tensors = _checkpoint_parts(hf_model)
  directory = _write_checkpoint(tmp_path / "ckpt", config, tensors)
  with pytest.raises(ValueError, match="mask_token_id"):
    load_hf_xlnet(directory)
  with pytest.raises(ValueError, match="mask_token_id"):
    load_hf_xlnet(hf_model)
  (directory / "tokenizer_config.json").write_text(json.dumps({
      "mask_token": "<mask>",
      "added_tokens_decoder": {"0": {"content": "<unk>"}, "7": {"content": "<mask>"}}}))
  assert load_hf_xlnet(directory)[0].mask_token_id == 7
  assert load_hf_xlnet(directory, mask_token_id=9)[0].mask_token_id == 9
  (directory / "config.json").write_text(json.dumps(dict(config, mask_token_id=11)))
  assert load_hf_xlnet(directory)[0].mask_token_id == 11


def test_xlnet_vocabulary_implies_mask_id_6(tmp_path):
  cfg = ModelConfig(vocab_size=32000, mask_token_id=6, d_model=8, n_layers=1, n_heads=2, d_head=4,
                    d_inner=16)
  export_hf_xlnet(cfg, zero_params(cfg), tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  del config["mask_token_id"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  assert load_hf_xlnet(tmp_path)[0].mask_token_id == 6


def test_export_rejects_head_size_mismatch(tmp_path):
  cfg = ModelConfig(vocab_size=VOCAB, mask_token_id=MASK_ID, d_model=32, n_layers=1, n_heads=4,
                    d_head=16, d_inner=64)
  with pytest.raises(ValueError, match="n_heads \\* d_head == d_model"):
    export_hf_xlnet(cfg, zero_params(cfg), tmp_path)


def test_missing_safetensors_is_reported(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    load_hf_xlnet(tmp_path)
