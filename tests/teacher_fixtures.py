"""Module-scoped fixtures shared by the teacher's test files (import them into a test module).

  world         (world config, knowledge base, oracles) of the default synthetic world
  sp            a SentencePiece tokenizer of world text with the markup family's markers
  tiny_teacher  an untrained embedded-format teacher of tiny shape over `sp`
"""
from __future__ import annotations

import pytest

from earlyrl_jax.teacher.prompts import markup as P
from tests.helpers import default_world, random_teacher, world_tokenizer


@pytest.fixture(scope="module")
def world():
  return default_world()


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  return world_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"),
                         [P.pair_prompt("p", "a", "b", "quality")])


@pytest.fixture(scope="module")
def tiny_teacher(sp):
  return random_teacher(sp, max_seq_len=256)
