"""Plugins the tests load by 'module:function' spec, as a user's own module would be."""

from rewards import majority_vote

SEEN_LABELS: list = []


def spy_reward(group):
    """Majority vote that records the task label the reward stage was handed."""
    SEEN_LABELS.append(group.task.label)
    return majority_vote(group)


def nan_reward(group):
    return [float("nan")] * len(group.rollouts)


def short_reward(group):
    return [1.0]


def weights_hash(weights: dict) -> str:
    """sha256 over tensors by sorted name: their names, then their bytes (on CPU, contiguous)."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ParamHashSelector:
    """first_k, recording on its way a hash of the policy's trainable weights (tests/test_distributed.py).

    ``select_batch`` is handed the policy at every step before its update, so the hash it records at
    step s is of the weights after step s - 1. Each rank appends ``{"rank", "pid", "step", "hash"}``
    lines to ``$TTRL_TEST_PROBE_DIR/rank<r>.jsonl``, outside the run directory."""

    def __call__(self, group, k):
        return list(range(k))

    def select_batch(self, groups, k, policy):
        import json
        import os

        from engine.distributed import trainable_parameters

        rank = int(os.environ.get("RANK", "0"))
        line = {"rank": rank, "pid": os.getpid(), "step": policy.optimizer_steps, "groups": len(groups),
                "hash": weights_hash(trainable_parameters(policy.model)),  # whole, gathered under FSDP
                "sharded": bool(getattr(policy, "sharded", False))}
        with open(os.path.join(os.environ["TTRL_TEST_PROBE_DIR"], f"rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        return [list(range(k)) for _ in groups]


class KillOnceSelector(ParamHashSelector):
    """``ParamHashSelector`` that, on the rank ``$TTRL_TEST_KILL_RANK``, SIGKILLs its own process when about to
    take optimizer step ``$TTRL_TEST_KILL_STEP`` + 1, once: it first creates the file ``$TTRL_TEST_KILL_MARKER``,
    and does nothing while that file exists (tests/test_ray_train.py: a worker dying mid-run)."""

    def select_batch(self, groups, k, policy):
        import os
        import signal

        out = super().select_batch(groups, k, policy)
        marker = os.environ["TTRL_TEST_KILL_MARKER"]
        if (os.environ.get("RANK") == os.environ["TTRL_TEST_KILL_RANK"]
                and policy.optimizer_steps == int(os.environ["TTRL_TEST_KILL_STEP"]) and not os.path.exists(marker)):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return out


class SamplerSyncProbe(ParamHashSelector):
    """``ParamHashSelector`` that also checks which weights sampled the groups it is handed
    (tests/test_distributed_vllm.py: one vLLM engine per rank).

    Each rollout carries the sampler's log-probs of its tokens (vLLM's processed log-probs: temperature
    applied, top-p 1). At ``select_batch`` the policy holds the weights left by the step before — the
    weights the sampler was synced to before it drew this step's rollouts. The probe recomputes the
    rollouts' log-probs with the policy and with the base checkpoint on disk, and adds to its line the
    largest absolute difference to each (``logp_diff_policy``, ``logp_diff_base``) and the ids of the
    tasks it was handed (``tasks``)."""

    base = None

    def select_batch(self, groups, k, policy):
        import json
        import os

        import torch
        from transformers import AutoModelForCausalLM

        out = super().select_batch(groups, k, policy)
        if SamplerSyncProbe.base is None:
            SamplerSyncProbe.base = AutoModelForCausalLM.from_pretrained(policy.model.config._name_or_path,
                                                                         dtype=torch.float32).eval()
        temperature = policy.args.temperature
        diffs = {"logp_diff_policy": 0.0, "logp_diff_base": 0.0}
        was_training = policy.model.training
        policy.model.eval()
        with torch.no_grad():
            for group in groups:
                prompt = list(group.task.prompt_ids)
                for r in group.rollouts:
                    ids = torch.tensor([prompt + list(r.token_ids)])
                    sampled = torch.tensor(r.logprobs)
                    for key, model in (("logp_diff_policy", policy.model), ("logp_diff_base", SamplerSyncProbe.base)):
                        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
                        logps = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1)
                        diffs[key] = max(diffs[key], (logps - sampled).abs().max().item())
        policy.model.train(was_training)
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(os.environ["TTRL_TEST_PROBE_DIR"], f"sync{rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": policy.optimizer_steps, "tasks": [g.task.id for g in groups], **diffs}) + "\n")
        return out


def latest_scored(window):
    """A guard score (``--guard_score plugins:latest_scored``) that ranks every snapshot with votes
    alike, so the latest snapshot whose weights sampled a row wins (ties go to the later one): a rollback
    to the step before the last, whatever the votes (tests/test_distributed.py, tests/test_fsdp.py)."""
    return float("nan") if not window else 0.0
