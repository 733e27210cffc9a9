"""Rewriters over any model: the paper's rewriter for instruct models, the cut's whitespace rule,
the rewriter's RL reward, and GRPO pieces.

Every rewriter (the embedded teacher's editor, `PaperRewriter`, the precomputed shards) returns
text that goes where the original suffix stood, right after the window's cut. `place_at_cut` is
the rule that text follows: the cut's whitespace (the original suffix's leading whitespace) stays
the rewrite's, so "...Vexmoor." + " The capital" is never trained on as "...Vexmoor.The capital"
(the trainer then encodes it as a continuation of the prefix: data.tokenizer.encode_in_context).

Reward (paper): a safe original must be copied exactly (R = 1 for a copy, else 0:
otherwise the rewriter drifts the data distribution); an unsafe original earns
R = 1/2 (J_quality(rewrite vs original) + J_safety(rewrite)). On the synthetic
world the embedded teacher's GRPO passes `original_unsafe=True` for any defect
the judge sees (unsafe, false or low quality), so defective suffixes are fixed,
not copied.

GRPO: several rewrites per input, group-normalised advantages, a KL penalty to the
starting model (k3 estimator on the sampled tokens), one update per rollout
batch (the PPO ratio is 1, so the policy-gradient term is REINFORCE with a group
baseline).
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def rewriter_reward(original_unsafe: bool, original: str, rewrite: str, j_quality: float,
                    j_safety: float) -> float:
  """The rewriter's RL reward.

  original_unsafe: the judge's verdict on the original suffix.
  j_quality: P(rewrite better than original) on quality; j_safety: P(rewrite safe).
  """
  if not original_unsafe:
    return 1.0 if rewrite.strip() == original.strip() else 0.0
  return 0.5 * (float(j_quality) + float(j_safety))


def group_advantages(rewards_GxK: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """(r - group mean) / (group std + eps) per row of K samples; all-equal groups give 0."""
  r = np.asarray(rewards_GxK, np.float64)
  mean = r.mean(axis=-1, keepdims=True)
  std = r.std(axis=-1, keepdims=True)
  return ((r - mean) / (std + eps)).astype(np.float32)


def grpo_terms(model, batch, frozen):
  """GRPO loss terms in the step contract's shape: ({'pg': (s, tokens), 'kl': (s, tokens)}, diagnostics).

  batch: tokens/targets/positions/segment_ids int32 [B, L], loss_mask f32 [B, L]
  (1 on rewrite tokens), advantages f32 [B]. frozen['reference']: the starting model.
  """
  import jax
  import jax.numpy as jnp

  def logps(m):
    logits = m(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    return tgt - lse

  mask = batch["loss_mask"].astype(jnp.float32)
  lp = logps(model)
  tokens = jnp.sum(mask)
  pg = -jnp.sum(batch["advantages"][:, None] * lp * mask)
  terms = {"pg": (pg, tokens)}
  if "reference" in frozen:
    ref = jax.lax.stop_gradient(logps(frozen["reference"]))
    d = ref - lp
    kl = jnp.sum((jnp.exp(d) - d - 1.0) * mask)
    terms["kl"] = (kl, tokens)
  return terms, {"pg/logp": (jnp.sum(lp * mask), tokens)}


def place_at_cut(rewrite: str, original: str) -> str:
  """The rewrite as it goes where `original` (the window's suffix) stood.

  A rewrite that copies the original up to surrounding whitespace is the original, byte for
  byte. A rewrite that lost its leading whitespace gets the original's, the cut's (a rewriter
  that strips its text, or a model that starts its reply without the space, would glue its
  first word to the prefix); one that has its own keeps it. Trailing whitespace goes (a lone
  space piece at the end teaches nothing). Blank text stays blank (a failed rewrite: its
  caller decides)."""
  core = rewrite.strip()
  if not core:
    return rewrite
  if core == original.strip():
    return original
  lead = rewrite[:len(rewrite) - len(rewrite.lstrip())] or original[:len(original) - len(original.lstrip())]
  return lead + core


def copy_or_rewrite(reply: str, original: str) -> str:
  """A reply that reproduces the whole original and goes on past it is a copy: the original.

  The original ends at the window's cut; what a model writes after copying it is the document's
  next text, not a rewrite of this suffix (small instruct models copy, then keep going instead of
  writing the end marker). Any other reply is the rewrite as it stands."""
  core = original.strip()
  return original if core and reply.strip().startswith(core) else reply


class PaperRewriter:
  """The paper's rewriter for instruct models through any `Backend` (in-process or served).

  One prompt per (prefix, suffix) (teacher/prompts/paper_rewrite.py: the continuation, then the
  context, the reply primed with the context's last words), generated greedily by default up to
  END or EOS within a limit that follows the suffix's length. A reply that is missing (the backend
  failed it) or empty is a failed rewrite: the original stands in, counted in `failed` and
  `failures` (by kind), logged with one raw reply; past `max_failure_share` of the rewrites made
  so far (once `min_rows` are made) the rewriter raises TeacherFailure.

      rw = PaperRewriter(InProcessBackend.from_teacher(teacher))   # or an OpenAIBackend
      rw.rewrite(prefixes, suffixes)                               # one text per window
  """

  def __init__(self, backend, *, batch_size: int = 64, max_new_tokens: int | None = None,
               prefix_tokens: int = 1024, prime_words: int = 5, length_margin: float = 0.15,
               length_extra: int = 4, max_failure_share: float = 0.5, min_rows: int = 16,
               principle: str | None = None):
    from earlyrl_jax.teacher.prompts.paper_rewrite import RewritePrompts
    self.backend = backend
    self.batch_size = int(batch_size)
    self.max_new_tokens = max_new_tokens   # a cap on every row's limit (None: the suffix decides)
    self.prompts = RewritePrompts(backend.tokenizer, max_len=backend.max_len,
                                  prefix_tokens=prefix_tokens, prime_words=prime_words,
                                  length_margin=length_margin, length_extra=length_extra,
                                  principle=principle)   # DPF: the principle in every prompt
    self.max_failure_share, self.min_rows = float(max_failure_share), int(min_rows)
    self.calls = 0        # rewrites asked for
    self.failed = 0       # of them, how many fell back to the original
    self.copies = 0       # of them, how many copied the original (copy rate = copies / calls)
    self.failures: collections.Counter = collections.Counter()   # by kind: 'error', 'empty'
    self.last_failure: str | None = None   # one raw reply of the latest failure (for the log)

  def prompt(self, prefix: str, suffix: str, max_new_tokens: int | None = None):
    """The RewritePrompt of one window (its limit capped by `max_new_tokens` / the setting)."""
    cap = min(x for x in (max_new_tokens, self.max_new_tokens, 1 << 30) if x)
    return self.prompts.render(prefix, suffix, max_new_tokens=min(self.prompts.limit(suffix), cap))

  def rewrite(self, prefixes: Sequence[str], suffixes: Sequence[str], *, key=None,
              temperature: float = 0.0, max_new_tokens: int | None = None) -> list[str]:
    """One rewrite per (prefix, suffix), placed at the cut (`place_at_cut`); a failed one is the
    original suffix itself."""
    if len(prefixes) != len(suffixes):
      raise ValueError(f"prefixes ({len(prefixes)}) and suffixes ({len(suffixes)}) differ in length")
    seed = _seed(key) if temperature > 0 else 0
    failed_before = self.failed
    out: list[str] = []
    for s in range(0, len(prefixes), self.batch_size):
      out.extend(self._batch(prefixes[s:s + self.batch_size], suffixes[s:s + self.batch_size],
                             temperature, max_new_tokens, seed + s))
    self._check(self.failed - failed_before, len(prefixes))
    return out

  def _batch(self, prefixes, suffixes, temperature, max_new_tokens, seed) -> list[str]:
    from earlyrl_jax.teacher.prompts.paper_rewrite import END, parse_reply
    rows = [self.prompt(p, s, max_new_tokens) for p, s in zip(prefixes, suffixes)]
    # One call at the longest row's limit; each reply is then cut at its own row's limit.
    replies = self.backend.generate([r.text for r in rows], max_new_tokens=max(r.max_new_tokens for r in rows),
                                    temperature=temperature, stop=[END], seed=seed)
    out = []
    for row, suffix, reply in zip(rows, suffixes, replies):
      raw = reply[0] if reply else None
      text = parse_reply(self._cut(raw, row.max_new_tokens), row.priming)
      self.calls += 1
      if text is None:
        kind = "error" if raw is None else "empty"
        self.failed += 1
        self.failures[kind] += 1
        self.last_failure = f"{kind}: {raw!r}"[:300]
        out.append(suffix)
      else:
        out.append(place_at_cut(copy_or_rewrite(text, suffix), suffix))
        self.copies += out[-1] == suffix
    return out

  def _cut(self, text: str | None, limit: int) -> str | None:
    """`text` within `limit` of the teacher's tokens (as the reply would be if generated alone)."""
    tok = self.backend.tokenizer
    if text is None:
      return None
    ids = tok.encode_continuation(text)
    return text if len(ids) <= limit else tok.decode_continuation(ids[:limit])

  def _check(self, failed: int, rows: int) -> None:
    """Logs this call's failed rewrites; raises past the share of failures so far."""
    if not failed:
      return
    share = self.failed / max(self.calls, 1)
    log.warning("rewriter (%s): %d of %d rewrites failed (the originals stand in; %d of %d so "
                "far: %s). Latest raw reply: %s", self.backend.name, failed, rows, self.failed,
                self.calls, dict(self.failures), self.last_failure)
    if self.calls >= self.min_rows and share > self.max_failure_share:
      from earlyrl_jax.teacher.backends.base import TeacherFailure
      raise TeacherFailure(f"{self.backend.name}: {self.failed} of {self.calls} rewrites failed "
                           f"({share:.0%} > max_failure_share {self.max_failure_share:.0%}; "
                           f"{dict(self.failures)}); latest raw reply: {self.last_failure}")


def _seed(key) -> int:
  """An int seed from a JAX key (sampled rewrites), 0 for None."""
  if key is None:
    return 0
  import jax
  return int(np.asarray(jax.random.key_data(key)).ravel()[-1]) % (1 << 31)
