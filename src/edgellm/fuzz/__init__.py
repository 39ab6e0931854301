"""Fuzzing edgellm's parsers and loaders: `python -m edgellm.fuzz TARGET --runs N --seed S [--corpus DIR] [--json]`.

Targets: `gguf` (the GGUF reader), `model` (metadata -> config -> model through the C engine, one decode step),
`safetensors` (the safetensors header of a Hugging Face directory), `tokenizer` (vocabularies, arbitrary text and
special-token text, decode of arbitrary ids) and `template` (chat templates and their messages); `all` runs them
one after another.

The mutator is our own, structure-aware and deterministic: seeds are tiny valid inputs built in code (plus the
corpus files); a mutation edits the structure (a GGUF metadata value or its type, a tensor's dims, type or
offset, a safetensors JSON header field, a template fragment, a message) and/or the bytes (flips, inserts,
deletes, splices, interesting integers such as 0, -1, 2**31-1, 2**63 and huge lengths, aimed at the count and
length fields the structure knows). atheris installs here as a wheel for Python 3.11 and runs, but it was not
chosen: its libFuzzer loop lives in the process under test and stops at the first failure (going on needs its
fork mode, which manages its own children instead of our caps), the input sequence follows coverage and timing
rather than the seed alone, its guidance sees only Python lines (the C kernels are not built with coverage
instrumentation), and every target here needs structure-level mutations it does not make.

Every input runs in a child process (`worker.py`) under a memory cap (RLIMIT_AS: the warmed-up child's address
space plus 256 MB) and a 1 s time cap (an interval timer inside Python; the parent kills a child that stays silent
2 s longer, which covers hangs inside C). A signal, an exception that is not one of edgellm's errors, a
MemoryError (even one edgellm turned into its own error), or an input over 1 s is a failure: the input is saved as
`<corpus>/<target>/<sha1>`, reported, and the run goes on in a fresh child.
"""

from .runner import Summary, fuzz, replay
from .targets import ALL, TARGETS

__all__ = ["ALL", "TARGETS", "Summary", "fuzz", "replay"]
