"""A server within a memory budget: the budget holds every slot's KV cache, and what streams from the file gives the
same answers as the mapped model."""

from __future__ import annotations

import pytest
from conftest import start_server, stop_server

from edgellm import LLM
from edgellm.errors import BudgetError
from edgellm.runtime import offload


def _minimum(llm: LLM, slots: int) -> int:
    cache = llm.session.cache
    return offload.minimum_budget(llm.config, llm.model.store, llm.model.output_name, slots * cache.n_bytes, llm.n_ctx,
                                  llm.n_threads, llm.n_batch, n_seqs=slots)  # fmt: skip


def test_the_budget_counts_every_slots_kv_cache(tiny_llama):
    llm = LLM(tiny_llama, n_ctx=256, n_threads=1)
    one, four = _minimum(llm, 1), _minimum(llm, 4)
    assert four > one
    LLM(tiny_llama, n_ctx=256, n_threads=1, mem_budget=four, n_parallel=4)
    with pytest.raises(BudgetError, match="minimum working set"):
        LLM(tiny_llama, n_ctx=256, n_threads=1, mem_budget=one, n_parallel=4)


def test_a_server_under_a_budget_answers_as_the_mapped_one(tiny_llama, tiny_server):
    """(Greedy answers of a random model: its top logits are far apart, so streamed and mapped weights, read in
    another order of units, pick the same tokens.)"""
    llm = LLM(tiny_llama, n_ctx=256, n_threads=1)
    budget = _minimum(llm, 4) + 4096  # the working set and little more: most matrices stream
    server = start_server(tiny_llama, "--parallel", "4", "--ctx-size", "256", "--threads", "1", "--mem-budget",
                          str(budget))  # fmt: skip
    try:
        for prompt in ("the cat", "a sea of"):
            ask = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
            streamed = server.post("/v1/completions", ask)[1]["choices"][0]["text"]
            assert streamed == tiny_server.post("/v1/completions", ask)[1]["choices"][0]["text"]
        assert "per token in" in server.log()  # the split, printed at load: weights stream every token
    finally:
        stop_server(server)
