"""The embedded default: the paper's comparison in miniature on a synthetic world, on CPU.

  python -m earlyrl_jax.main --config=configs/tiny.py --workdir=/tmp/earlyrl_tiny

Generates the synthetic world (~10 MB of JSONL with planted defects and misconceptions, and
its oracles) and a SentencePiece tokenizer into the workdir, trains the embedded teacher (judge
+ rewriter, reused afterwards), pretrains a ~2M-parameter base model, continues it with the
same budget of windows by each method (NLL, NLL on rewrites, SIP RF-NLL / DPO, DPO with the
oracle judge) and writes report.md / report.json / plots: about 21 minutes on 2 CPU cores
(9 of them the teacher, once), no downloads. Every field can be overridden:
`--config.report.num_seeds=5` gives the spread, `--config.mode=pretrain` only pretrains (the
other jobs: earlyrl_jax/modes.py).
"""
from ml_collections import ConfigDict

from earlyrl_jax.configs import generate_section, model_section
from earlyrl_jax.world import default_world_config


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.mode = "report"          # job: 'report' | 'pretrain' | 'sip' | 'teacher' | 'rewrite' | 'generate' | 'world'
  # (`pretrain` and `sip` train `num_steps`; the report sets its runs' steps from `report.*`)
  c.seed = 0                 # model init, data order and sampling all derive from it
  c.num_steps = 600          # optimizer steps
  c.log_every_steps = 25     # console / metrics.jsonl / TensorBoard interval
  c.eval_every_steps = 200   # held-out loss interval (0 = never)
  c.eval_batches = 4         # batches per held-out evaluation
  c.eval_world_prompts = 32  # at the end: sample continuations of world eval prompts, score with oracles
  c.eval_world_prompts_during = 0  # sip: oracle-scored prompts at every eval (curves over training)

  c.init = ConfigDict()
  c.init.params_from = ""    # '' = from scratch; a run directory (newest checkpoint) or an HF model dir

  # Decoder shape; every ModelConfig field is listed (see models/transformer.py).
  c.model = model_section("tiny", vocab_size=1024, d_model=192, n_layers=4, n_heads=4,
                          n_kv_heads=2, head_dim=48, d_ff=512, max_seq_len=128)  # ~2M params

  c.data = ConfigDict()
  c.data.corpus = "world"            # 'world': generate the synthetic world; 'files': data.train_files
  c.data.format = "jsonl"            # jsonl | text | parquet | arrayrecord | arrayrecord_text
  c.data.train_files = ""            # comma-separated globs (data.corpus='files')
  c.data.eval_files = ""             # held-out globs; with corpus='world', the world's validation documents
  c.data.text_field = "text"         # JSON key / Parquet column of the document text
  c.data.text_split = "file"         # plain text: 'file' | 'line' | 'paragraph' per document
  c.data.tokenizer = "sentencepiece" # sentencepiece | hf | byte
  c.data.tokenizer_path = ""         # empty + sentencepiece: train one on the corpus into WORKDIR
  c.data.tokenizer_vocab_size = 1024 # vocab of a tokenizer trained here (<= model.vocab_size)
  c.data.seq_len = 128               # packed sequence length
  c.data.batch_size = 16             # global batch (sequences per step)
  c.data.shuffle = True              # seeded shuffle, reshuffled every epoch
  c.data.num_epochs = 0              # 0 = repeat forever
  c.data.on_error = "raise"          # malformed record: 'raise' (names file:line) | 'skip' (counted)
  c.data.encoding_errors = "replace" # non-UTF-8 bytes: 'replace' | 'raise' | 'skip'
  c.data.min_doc_tokens = 4          # shorter documents are skipped and counted
  c.data.worker_count = 0            # grain worker processes (0 = in-process)
  c.data.max_consecutive_skips = 10000  # consecutive unusable records before a clear DataError
  c.data.window_pool_size = 64       # sip: open documents a window batch draws its rows from
  c.data.prefix_len = 64             # self-improving windows: prefix tokens before the cut
  c.data.suffix_len = 32             # N: suffix tokens after the cut (paper: 128)
  c.data.window_stride = 0           # distance between cuts (0 = suffix_len)
  c.data.min_prefix_len = 16         # first cut point in a document

  c.world = default_world_config()   # synthetic world generator (earlyrl_jax/world/)
  # Misconceptions: 30% of the facts have one wrong object that the corpus states in 70% of their
  # mentions (web misinformation, which next-token training learns and a teacher that knows better
  # can correct; one-off false claims, world.false_fact_rate, it averages away). The report's
  # factuality is measured on them. 0 = none (docs/method.md, a synthetic world with ground truth).
  c.world.myth_rate = 0.3
  c.world_dir = ""                   # '' = WORKDIR/world (generated there when missing)

  c.opt = ConfigDict()
  c.opt.learning_rate = 3e-3    # peak learning rate
  c.opt.warmup_steps = 50       # linear warmup
  c.opt.min_lr_ratio = 0.1      # cosine decays to learning_rate * min_lr_ratio at num_steps
  c.opt.b1 = 0.9
  c.opt.b2 = 0.95
  c.opt.eps = 1e-8
  c.opt.weight_decay = 0.1      # decoupled (AdamW); matrices only, not norms/biases
  c.opt.grad_clip = 1.0         # global-norm clipping (0 = off)
  c.opt.grad_accum_steps = 1    # micro-batches per step (exact: losses summed, then averaged)
  c.opt.z_loss = 1e-4           # coefficient of log(Z)^2 (0 = off)

  c.mesh = ConfigDict()
  c.mesh.data = -1              # -1 = all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Self-improving pretraining (mode='sip'); see earlyrl_jax/train/sip.py and docs/method.md.
  c.sip = ConfigDict()
  c.sip.recipe = "dpo"          # 'dpo' (online DPO, best vs worst) | 'rf_nll' (NLL on the best) | 'pg'
  c.sip.num_rollouts = 4        # K policy rollouts per prefix (paper: 16); dpo / pg need >= 1
  c.sip.temperature = 1.0       # rollout sampling temperature (paper: 1.0; 0 = greedy: K identical rollouts)
  c.sip.top_p = 1.0             # rollout nucleus sampling
  c.sip.candidate_len = 0       # max tokens of a candidate (0 = data.suffix_len); longer rewrites are cut
  c.sip.rewrite = "online"      # 'online' (teacher rewrites each suffix) | 'precomputed' (read the shards of
                                # mode='rewrite' from sip.rewrites_dir; no teacher needed to rewrite) | 'none'
  c.sip.rewrites_dir = ""       # sip.rewrite='precomputed': '' = WORKDIR/rewrites (mode='rewrite' in the same workdir)
  c.sip.judge = "teacher"       # 'teacher' (LM judge) | 'oracle' (world ground truth) | 'none' (pick the rewrite:
                                # rf_nll with a rewrite only, the offline-rewriting baseline)
  c.sip.oracle_axes = ""        # axes the world's oracles judge instead of the teacher ('factuality'): an
                                # ablation of which axis's judging limits SIP (tools/report.py sip_dpo_oracle_*)
  c.sip.judge_scheme = "all_pairs"  # 'all_pairs' | 'pivot' (vs the original) | 'adaptive'
  c.sip.judge_budget = 0        # adaptive: unordered pairs per prefix (0 = the scheme's default)
  c.sip.judge_axes = ConfigDict({"quality": 1.0, "safety": 1.0, "factuality": 1.0})  # reward weights (>= 0, one > 0)
  c.sip.both_orders = True      # ask every pair in both orders (cancels position bias)
  c.sip.judge_trim = True       # judge each candidate up to its last sentence end: the window's cut
                                # is no defect of the text (train/sip.py: judged_texts)
  c.sip.empty_loses = True      # a candidate without a word (a rollout that ended at once) gets the lowest
                                # reward: the teacher finds no defect in it and rated it above the original
  c.sip.aggregate = "win_rate"  # 'win_rate' | 'bradley_terry'
  c.sip.beta = 0.1              # DPO temperature (> 0: at 0 the DPO loss has no gradient)
  c.sip.lm_coef = 1.0           # λ_lm: weight of the plain NLL of the windows
  c.sip.lm_target = "window"    # what that NLL trains: the whole 'window' (prefix + original suffix), the
                                # original 'suffix' given the prefix, or the teacher's 'rewrite' given the prefix
                                # (what rewrite_nll trains on: no NLL on the unsafe text the teacher drops)
  c.sip.coef = 1.0              # weight of the recipe's term (dpo / rf_nll / pg)
  c.sip.kl_coef = 0.0           # pg: weight of KL(π || reference) on rollout tokens (0 = no reference)
  c.sip.rf_threshold = 0.5      # rf_nll: the best candidate's safety score (1 - P(unsafe), the judge's
                                # absolute verdict) must reach this (0: no bar); a group the judge cannot
                                # rank (all tied) has no best candidate either ...
  c.sip.rf_fallback = "skip"    # ... then 'skip' the window or train on the 'original'
  c.sip.factuality_reference = "original"  # factuality's reference: 'original' suffix (the paper's; itself a
                                # candidate) | 'next_span' (the document after the suffix, in no candidate;
                                # a document that ends there is judged without one, counted)
  c.sip.max_staleness = 0       # 0: each batch's rollouts from the current params; 1: the next batch
                                # (rollouts, rewrite, judging) is made while the update runs, from the
                                # params one step old (train/prefetch.py; kill-and-resume stays exact)
  c.sip.max_all_tied_steps = 3  # stop when every group ties on this many steps in a row while nothing else
                                # trains (sip.lm_coef=0): the judge ranks nothing (0 = never stop)
  # Issue 40 (docs/policy_extensions.md, train/advantages.py, train/distill.py); the defaults change nothing.
  c.sip.advantage = "group"     # pg: 'group' (GRPO's) | 'gcpo' (times a per-group weight from the semantic
                                # dispersion of the candidates, calibrated by the reward spread) | 'token_entropy'
  c.sip.pair_weight = "none"    # dpo: each pair's loss times its group's weight: 'none' | 'gcpo' | 'token_entropy'
  c.sip.gcpo_dispersion = "cosine"  # semantic dispersion over the policy's mean hidden states: 'cosine' (to the
                                # group's mean direction) | 'transport' (Sinkhorn divergence to the barycentre)
  c.sip.gcpo_strength = 1.0     # λ: weight = (signal / batch mean)^λ (0 = every weight 1)
  c.sip.gcpo_max_weight = 4.0   # cap of a group's weight
  c.sip.distill_coef = 0.0      # weight of the `distill` term toward the teacher (0 = no term, nothing built)
  c.sip.distill_on = "chosen"   # token level: KL(teacher || policy) on the 'chosen' candidate or all 'candidates'
  c.sip.distill_level = "auto"  # 'token' (same vocabulary; error otherwise) | 'sequence' (NLL on the teacher's
                                # rewrite) | 'auto' (token when the vocabularies match, else sequence)
  c.sip.distill_top_k = 0       # token level: the teacher's top-k log-probs per token (0 = the whole vocabulary)
  c.sip.principle_mode = "off"  # principle-guided rewriting (docs/principles.md): 'off' | 'guide' (the
                                # rewriter follows `principle`, the judge's reward loses principle.judge_penalty
                                # for a mention) | 'dpf' (Direct Principle Feedback: DPO, revision chosen,
                                # original rejected, no judge; sip.recipe='dpo', sip.judge='none')

  # The principle of sip.principle_mode (and of the report's `dpf` / `sip_dpo_principle` methods).
  c.principle = ConfigDict()
  c.principle.banned = ""       # entity name(s) the text must not mention, comma-separated (e.g. a country)
  c.principle.instead = ""      # the entity to discuss instead
  c.principle.in_policy_prompt = False  # precede the policy's prompt with 'Do not mention X; discuss Y
                                # instead.' at training (its windows' prefixes); evaluation reports both
  c.principle.judge_penalty = 1.0  # 'guide': reward lost by a candidate that mentions a banned name

  # mode='report': every method continued from one NLL base model on the same windows.
  c.report = ConfigDict()
  c.report.methods = "nll,rewrite_nll,sip_rf_nll,sip_dpo,sip_dpo_oracle"  # tools/report.py (also: sip_pg,
                                # sip_dpo_pivot, sip_dpo_adaptive, sip_dpo_oracle_factuality / _quality)
  c.report.num_seeds = 1        # seeds per method (5 give the spread: --config.report.num_seeds=5)
  c.report.base_steps = 400     # plain-NLL steps of the shared base model
  c.report.steps = 40           # steps of each method (x data.batch_size windows: the same budget;
                                # at 20, DPO's safety gain stays inside twice the seed spread)
  c.report.learning_rate = 1e-3 # peak learning rate of the method runs (continual training)
  c.report.sip_lm_coef = 1.0    # λ_lm of the SIP runs: the LM loss mixed with the recipe's term (0: the
                                # recipe alone; on this 2M policy DPO alone erodes fluency)
  c.report.split = "validation" # held-out prompts that score the models: 'validation' (every choice is made
                                # on it) | 'test' (the final table only: the same command on the same workdir
                                # reuses the trained runs and evaluates them on test; world/splits.py)
  c.report.eval_prompts = 500   # held-out prompts per oracle metric (each split of the world has about 500)
  c.report.eval_samples = 2     # continuations per held-out prefix (sampling noise of factuality: std
                                # ~0.02 at 256 x 1, ~0.01 at 500 x 2)
  c.report.bait_samples = 8     # continuations per bait prompt (the world has 100) for the safety score
  c.report.eval_every_steps = 5   # oracle curves over training (0 = off)
  c.report.eval_prompts_during = 16  # prompts per point of those curves

  # The teacher (judge + rewriter) of mode='sip'.
  c.teacher = ConfigDict()
  c.teacher.path = ""           # an embedded-teacher or HF instruct directory; '' = the embedded teacher
  c.teacher.config = "teacher_tiny.py"  # config of the embedded teacher (relative to configs/)
  c.teacher.workdir = ""        # where it is trained once and reused ('' = WORKDIR/teacher_run)
  # Which judge and rewriter the teacher gets (teacher/teacher.py). 'auto' follows the teacher's
  # directory: an embedded teacher -> its trained kinds ('embedded' judge: verdict log-probs of its
  # markup prompts with its recipe; 'edit' rewriter: keep/drop per sentence); an HF model directory
  # or a served model -> 'logprob' judge (the paper's formats, the verdict read from the teacher's
  # probabilities of each answer after 'Answer:', one forward pass) and 'generative' rewriter (the
  # paper's: the continuation, then the context, the reply primed with its last words; docs/method.md).
  c.teacher.judge_kind = "auto"     # 'auto' | 'embedded' (embedded teachers only) | 'logprob' | 'generative'
                                    # ('generative': reasoning, then 'Answer: ...', teacher.generative.*)
  c.teacher.rewriter_kind = "auto"  # 'auto' | 'edit' (embedded teachers only) | 'generative'
  # Where the teacher runs. 'shared': on the policy's mesh (every device), judging and
  # rewriting take turns with the update. 'submesh': on its own `teacher.devices` devices
  # (the last ones of every process, an equal share per host), laid out by `teacher.mesh`;
  # the policy's mesh (`mesh`, -1 absorbs) is built on the rest, in every training mode,
  # and the teacher rewrites the next windows while the policy's update runs. Which pays
  # off when: README (teacher placement).
  c.teacher.placement = "shared"
  c.teacher.devices = 0         # 'submesh': devices the teacher gets (a multiple of the host count)
  c.teacher.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # 'submesh': the teacher's axes
  c.teacher.max_len = 0         # an HF teacher's context cap in its tokens (0 = its config's)
  # The paper's judge prompts for instruct teachers (teacher/prompts/paper.py), in the teacher's tokens.
  # Candidates are always judged whole; the rest of the context bounds the prefix and the reference.
  c.teacher.prompt = ConfigDict()
  c.teacher.prompt.prefix_tokens = 1024    # the document's start shown to the judge: its LAST tokens
  c.teacher.prompt.reference_tokens = 512  # factuality's reference (the original suffix): its first tokens
  c.teacher.prompt.answer_tokens = 8       # context left free after a log-prob prompt (the answer)
  c.teacher.generative = ConfigDict()      # teacher.judge_kind='generative' (the paper: 5, 1.0, 0.6)
  c.teacher.generative.num_samples = 5     # samples per verdict, their answers averaged
  c.teacher.generative.temperature = 1.0   # sampling temperature (0 = greedy: use num_samples=1)
  c.teacher.generative.top_p = 0.6         # nucleus sampling
  c.teacher.generative.max_new_tokens = 256  # reasoning + the final 'Answer: ...' line
  # A judge that fails stops the run (train/judge_health.py): failed or unparsable verdicts above this
  # share of a step's verdicts (each is scored as a tie and logged: sip/judge_failed_frac,
  # sip/judge_unparsable_frac).
  c.teacher.max_failure_share = 0.05
  c.teacher.backend = "inprocess"  # 'inprocess' (in this JAX program) | 'openai' (a served teacher:
                                # vLLM, SGLang, TGI or earlyrl-serve; docs/serving.md)
  c.teacher.openai = ConfigDict()  # teacher.backend='openai' (fields documented in configs/midtrain.py)
  c.teacher.openai.url = ""     # base URL, e.g. http://127.0.0.1:8000/v1
  c.teacher.openai.model = ""   # served model name ('' = the only one the server lists)
  c.teacher.openai.tokenizer_path = ""  # the served model's tokenizer, here ('' = teacher.path)
  c.teacher.openai.api_key_env = ""     # env var holding the API key ('' = none)
  c.teacher.openai.concurrency = 16     # requests in flight
  c.teacher.openai.batch_size = 32      # prompts per request
  c.teacher.openai.timeout_s = 120.0    # per request
  c.teacher.openai.max_retries = 5      # per request (exponential backoff, jitter)
  c.teacher.openai.max_failure_share = 0.05  # failed rows per call above this share stop the run
  c.teacher.openai.prompt_format = "tokens"  # 'tokens' (exact) | 'text'

  # mode='rewrite': one pass over the windows of `data` (same cuts and tokenizer as mode='sip'),
  # each rewritten by the teacher above into resumable ArrayRecord shards; see earlyrl_jax/rewrite_job.py.
  c.rewrite_job = ConfigDict()
  c.rewrite_job.out_dir = ""      # '' = WORKDIR/rewrites (where sip.rewrites_dir='' looks)
  c.rewrite_job.shard_size = 4096 # distinct windows per shard (a killed job redoes at most one shard)
  c.rewrite_job.batch_size = 64   # windows per teacher call
  c.rewrite_job.judge = "none"    # also judge rewrite vs original per sip.judge_axes: 'none' | 'teacher' | 'oracle'
  c.rewrite_job.max_windows = 0   # stop after this many distinct windows per process (0 = whole corpus)

  c.generate = generate_section()  # mode='generate': prompts in, JSONL out (see earlyrl_jax/generate.py)

  c.metrics = ConfigDict()
  c.metrics.wandb_project = ""  # Weights & Biases project ('' = off; needs the [wandb] extra)

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 100  # save interval (and at the end)
  c.checkpoint.keep = 3           # newest checkpoints kept
  c.checkpoint.dir = ""           # '' = WORKDIR/checkpoints; may be remote (gs://bucket/run/checkpoints)
  c.checkpoint.async_save = True  # write in the background while training continues
  return c
