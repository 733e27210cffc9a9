"""The embedded teacher reads its rows packed (models/tree_scorer.py, FEW_SHAPES) and decides
exactly what the row-per-read path decided: the judge's verdicts, claims and surprise, the
editor's keep / drop verdicts and rewrites; and a stream of batches stops compiling."""
from __future__ import annotations

import jax
import numpy as np

from earlyrl_jax.embedded.editor import EditRewriter
from earlyrl_jax.embedded.recipe import JudgeRecipe
from earlyrl_jax.models.scoring import Scorer
from earlyrl_jax.teacher.tournament import judge_groups
from tests.teacher_fixtures import sp, tiny_teacher  # noqa: F401  (fixtures)

PREFIXES = ["Tal is a city in Vexmoor. It is old.", "Facts about Brax:", "The river Ost runs north."]
CANDIDATES = [["Tal lies in Vexmoor. It is big. Nobody knows more.", "It is big.", "Tal is old. Tal is old.", ""],
              ["- Brax is a town.", "Brax is a town. It lies in Ost. The end", "Brax.", "Brax is a town."],
              ["It runs north. It is long.", "The river is long!", "Ost runs north.", "It runs. Far away"]]
RECIPE = JudgeRecipe(format="scored", mix={"quality": (1.0, 0.25), "factuality": (0.0, 1.0)}, broken=(8.0, 2),
                     claim_total=0.1, checkable=(6.0, 7.0), claim_floor=3.0, safety_by_sentence=True,
                     claim_check=True)


def _judges(teacher):
  """(packed, row per read): the same recipe on the tree scorer and on models/scoring.Scorer."""
  packed = teacher.judge(recipe=RECIPE)
  rows = teacher.judge(recipe=RECIPE, scorer=Scorer(teacher.graphdef, pad_id=teacher.tokenizer.pad_id))
  assert packed.tree is not None and rows.tree is None
  return packed, rows


def test_packed_judge_reads_what_a_row_per_read_judge_reads(tiny_teacher):
  packed, rows = _judges(tiny_teacher)
  pre = [p for p, cs in zip(PREFIXES, CANDIDATES) for _ in cs]
  cand = [c for cs in CANDIDATES for c in cs]
  np.testing.assert_allclose(packed.pointwise(pre, cand), rows.pointwise(pre, cand), atol=1e-5)
  a, b = packed.score_axes(pre, cand, axes=["quality", "factuality"]), \
      rows.score_axes(pre, cand, axes=["quality", "factuality"])
  for axis in a:
    np.testing.assert_allclose(a[axis], b[axis], atol=1e-4)
  for x, y in zip(packed.claim_probs(cand), rows.claim_probs(cand)):
    np.testing.assert_allclose(x, y, atol=1e-5)
  assert packed.calls == rows.calls   # the same verdicts asked, fewer tokens run
  # Shared beginnings are read once: 4951 of 7156 prompt tokens (0.69) when this file runs alone,
  # 6244 of 8449 (0.74) inside the whole suite (the `sp` fixture's tokenizer comes out differently;
  # why is not found yet), far below reading every prompt whole either way.
  assert packed.tree.tokens_tries < 0.8 * packed.tree.tokens_prompts


def test_packed_judge_picks_what_the_row_per_read_judge_picks(tiny_teacher):
  packed, rows = _judges(tiny_teacher)
  got = [judge_groups(j, PREFIXES, CANDIDATES, references=[c[0] for c in CANDIDATES],
                      tie_rng=np.random.default_rng(0)) for j in (packed, rows)]
  np.testing.assert_array_equal(got[0].chosen, got[1].chosen)
  np.testing.assert_array_equal(got[0].rejected, got[1].rejected)
  np.testing.assert_allclose(got[0].rewards, got[1].rewards, atol=1e-5)


def _row_per_check(editor, params, plans):
  """The editor's verdicts as they were read before: one scored row per CHECK."""
  from earlyrl_jax.teacher.judges.lm import two_way
  scorer = Scorer(editor.teacher.graphdef, pad_id=editor.tokenizer.pad_id)
  return [two_way(scorer.verdict_logprobs(params, [pl.ids[:c + 1] for pl in [pl] for c in pl.checks],
                                          editor.verdicts)[:, ::-1]) if pl.checks else np.zeros((0,), np.float32)
          for pl in plans]


def test_editor_reads_each_prompt_once_with_the_row_per_check_verdicts(tiny_teacher):
  ed = EditRewriter(tiny_teacher, threshold=0.5, surprise_threshold=3.0, window_cut=True)
  plans = [ed.plan(p, cs[0]) for p, cs in zip(PREFIXES, CANDIDATES)] + [ed.plan("x", "")]
  got, want = ed.drop_probs(tiny_teacher.params, plans), _row_per_check(ed, tiny_teacher.params, plans)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)
  # Surprise read packed (rows of one prefix share it) equals the scorer's row per candidate.
  from earlyrl_jax.embedded import surprise as S
  sur = ed.probe.sentences(tiny_teacher.params, PREFIXES, [c[1] for c in CANDIDATES])
  rows = [S.sentence_tokens(tiny_teacher.tokenizer, p, c[1], tiny_teacher.max_len) for p, c in zip(PREFIXES, CANDIDATES)]
  gaps = Scorer(tiny_teacher.graphdef).surprise(tiny_teacher.params, [r[0] for r in rows], [r[1] for r in rows])
  for s, (_, _, spans), g in zip(sur, rows, gaps):
    np.testing.assert_allclose(s, [g[a:b].max() if b > a else 0.0 for a, b in spans], atol=1e-4)


def test_a_stream_of_batches_compiles_nothing_after_the_first(tiny_teacher):
  """FEW_SHAPES: other batch sizes and prompt lengths reuse the judge's and the editor's programs;
  compile_ahead: write_anew's program exists before the first batch that needs it."""
  ed = EditRewriter(tiny_teacher, window_cut=True, compile_ahead=True, max_new_tokens=8, threshold=1.0)
  judge = tiny_teacher.judge(recipe=RECIPE)
  assert judge.tree is ed.tree   # one scorer per model: the editor's programs serve the judge
  assert ed.sampler.num_compilations == 0
  _, keep, _ = ed.edit(tiny_teacher.params, PREFIXES[:1], ["Tal lies in Vexmoor."], key=jax.random.key(0))
  assert keep[0].all()   # threshold 1: every sentence kept, nothing written anew
  judge.pointwise(PREFIXES[:2], [c[0] for c in CANDIDATES[:2]])
  tree_programs, sampler_programs = ed.tree.num_compilations, ed.sampler.num_compilations
  assert sampler_programs == 2   # prefill + decode, compiled ahead
  for n in (3, 1, 2):
    pre, cand = PREFIXES[:n], [c[n] for c in CANDIDATES[:n]]
    ed.write_anew(tiny_teacher.params, pre, jax.random.key(n))
    ed.drop_probs(tiny_teacher.params, [ed.plan(p, c) for p, c in zip(pre, cand)])
    judge.pointwise(pre, cand)
    judge.claim_probs(cand)
  assert ed.tree.num_compilations == tree_programs and ed.sampler.num_compilations == sampler_programs


def test_write_anew_at_one_prompt_length_writes_what_the_length_buckets_wrote(tiny_teacher, monkeypatch):
  from earlyrl_jax.embedded import editor as E
  from earlyrl_jax.sampling.sampler import Sampler
  monkeypatch.setattr(E, "first_sentences", lambda text, n: text)   # the whole continuation compared
  ed = EditRewriter(tiny_teacher, max_new_tokens=16)
  got = ed.write_anew(tiny_teacher.params, PREFIXES, jax.random.key(0))
  ed.sampler = Sampler(tiny_teacher.model(), pad_id=tiny_teacher.tokenizer.pad_id)   # buckets by length
  ed._sampled = True
  assert ed.write_anew(tiny_teacher.params, PREFIXES, jax.random.key(0)) == got and all(got)
