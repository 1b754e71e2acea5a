"""The transformers sampler: log-probs of the distribution really sampled, groups larger than a batch,
and memory bounded by its batch whatever the vocabulary (a 151,936-row Qwen2.5 miniature)."""

import subprocess
import sys
import textwrap

import torch

from engine.samplers.hf import HFSampler
from engine.types import SamplingParams
from factories import make_task


def processed_logprobs(model, prompt_ids, completion_ids, temperature, top_p):
    """log p(token) under temperature then top-p (nucleus) filtering, from one teacher-forced forward."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature  # (T, V)
    probs = torch.softmax(logits, -1)
    sorted_p, order = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p              # outside the nucleus
    logits = logits.scatter(-1, order, torch.where(drop, float("-inf"), logits.gather(-1, order)))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids).unsqueeze(-1)).squeeze(-1)


def test_sampled_logprobs_are_those_of_the_processed_distribution(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    sampler = HFSampler(model, tok, batch_size=8, progress=False)
    tasks = [make_task(i, question=q, tokenizer=tok) for i, q in enumerate(["1+2=", "3+4="])]
    torch.manual_seed(0)
    groups = sampler.generate(tasks, SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=6))
    assert [len(g.rollouts) for g in groups] == [4, 4]
    for group in groups:
        for r in group.rollouts:
            want = processed_logprobs(model, group.task.prompt_ids, r.token_ids, 0.7, 0.9)
            assert len(r.logprobs) == len(r.token_ids)
            assert torch.allclose(torch.tensor(r.logprobs), want, atol=1e-4), (r.logprobs, want)


def test_a_group_larger_than_the_batch_is_sampled_in_parts(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    sampler = HFSampler(model, tok, batch_size=3, progress=False)
    tasks = [make_task(i, question=q, tokenizer=tok) for i, q in enumerate(["1+2=", "3+4="])]
    groups = sampler.generate(tasks, SamplingParams(n=7, max_new_tokens=4))
    assert [g.task.id for g in groups] == ["0", "1"] and [len(g.rollouts) for g in groups] == [7, 7]


MEMORY = textwrap.dedent("""
    import resource, sys, tempfile, torch
    from pathlib import Path
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from benchmarks.miniature import make_model_dir
    from engine.samplers.hf import HFSampler
    from engine.types import SamplingParams, Task
    path = make_model_dir(Path(tempfile.mkdtemp()), "Qwen/Qwen2.5-Math-1.5B")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sampler = HFSampler(model, tok, batch_size=32, progress=False)
    tasks = [Task(id=str(i), question="q", label=None, prompt="q", prompt_ids=(1, 5 + i, 6)) for i in range(4)]
    sampler.generate(tasks[:1], SamplingParams(n=2, max_new_tokens=2))          # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    groups = sampler.generate(tasks, SamplingParams(n=8, max_new_tokens=64))   # 32 sequences x 64 tokens
    tokens = sum(len(r.token_ids) for g in groups for r in g.rollouts)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, tokens)
""")


def test_sampling_a_150k_vocabulary_keeps_no_vocabulary_sized_tensor_per_token():
    # 32 sequences x 64 tokens x 151,936 float32 scores would be 2.5 GB per copy (generate's
    # output_scores, then stacked and log_softmax-ed: three copies); one step's copy is 19 MB.
    out = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    grown_mb, tokens = out.stdout.split()[-2:]
    assert int(tokens) > 32 * 48, "the sequences must really be long"
    assert float(grown_mb) < 300, f"sampling grew the peak memory by {grown_mb} MB"
