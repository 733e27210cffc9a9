"""Where the teacher's model runs: in this process (JAX) or behind an OpenAI-compatible server.

Judges and rewriters (`teacher/`) speak only to the `Backend` protocol of `base.py`, so the
same prompt families and verdict readers work with an embedded teacher, an HF instruct model
loaded in-process, or a vLLM / SGLang / TGI server.
"""
