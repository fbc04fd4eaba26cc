"""The online solver of ``openrlhf_eva.train_rloo``, built from OpenRLHF's parts.

One rank's work per step, in order:

1. ``generate``: n samples per prompt with batched HF ``generate`` (KV cache) on the policy, as an
   OpenRLHF ``Experience`` (left-padded prompt + right-padded response, ``action_mask`` up to and
   including the first eos).
2. ``score``: rewards ``[P, n]`` from an ``openrlhf_eva.rewards`` oracle (``reward_func`` file, RM
   server or reward model), fed the strings OpenRLHF feeds them; NaN marks a response it could
   not score.
3. ``attach_log_probs``: old log-probs from the policy ``Actor``, reference log-probs and
   ``compute_approx_kl`` from OpenRLHF when a reference is loaded.
4. ``compute_advantages``: the critic-free estimators of OpenRLHF 0.11.2
   (``experience_maker.py::compute_advantages_and_returns``, re-implemented from reading it
   because that module imports vLLM; ``tests/test_online_advantages.py`` runs both on the same
   input): group baselines, ``compute_reward`` (KL penalty, reward clip), returns, whitening.
5. ``policy_update``: OpenRLHF's ``PolicyLoss`` (+ KL loss with ``--algo.kl.use_loss``) over
   micro-batches, normalised per optimizer step by ``iter_grad_accum_global_norm``, stepped by the
   DeepSpeed strategy; or ``online_dpo_update``: best vs worst of the n samples of each prompt,
   eva's ``PreferenceLoss("dpo")`` against the reference (OAIF), after ``rewrite_chosen_responses``
   (``--eva.rewrite_chosen``) has put the creator's improved chosen responses into the experience.

Groups with a non-finite reward get advantage 0 (online DPO: no pair) rather than being dropped, so
every rank runs the same number of micro-batches and the optimizer-step count stays exact.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.distributed as dist
from openrlhf.models import PolicyLoss
from openrlhf.models.loss import aggregate_loss
from openrlhf.models.utils import compute_approx_kl, compute_reward, masked_mean
from openrlhf.trainer.ppo_utils import Experience
from openrlhf.utils.loss_utils import iter_grad_accum_global_norm

from openrlhf_eva.rollout import Rollouts
from openrlhf_eva.solve.losses import PreferenceLoss
from openrlhf_eva.solve.rewriter import rewrite_chosen

# Estimators this trainer offers: OpenRLHF's critic-free ones that need no batch-wide baseline.
ESTIMATORS = ("rloo", "reinforce", "reinforce_baseline", "group_norm", "dr_grpo")


def _forked_rng_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def seeded_generate(model, **kwargs) -> torch.Tensor:
    """HF ``generate`` sampling under ``seed`` (a kwarg), leaving the global RNG untouched."""
    seed = kwargs.pop("seed")
    with torch.random.fork_rng(devices=_forked_rng_devices()):
        torch.manual_seed(seed)
        return model.generate(**kwargs)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], n: int, *, max_new_tokens: int, temperature: float,
             top_p: float, seed: int, prompt_max_len: int) -> Experience:
    """n samples for each (already templated) prompt; prompt i's samples are rows i*n .. i*n+n-1."""
    device = next(model.parameters()).device
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                    max_length=prompt_max_len).to(device)
    was_training = model.training
    # OpenRLHF's Actor asks MoE models for router logits (their balancing loss); with a KV cache that
    # loss meets one new token against the whole attention mask and fails, so generation goes without.
    router_logits = getattr(model.config, "output_router_logits", None)
    if router_logits is not None:
        model.config.output_router_logits = False
    model.eval()
    try:
        # use_cache: OpenRLHF's Actor turns the config's cache off for training; generation wants it.
        out = seeded_generate(model, seed=seed, **enc, do_sample=True, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, num_return_sequences=n, use_cache=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    finally:
        model.train(was_training)
        if router_logits is not None:
            model.config.output_router_logits = router_logits
    # Experiences live on the CPU, as upstream's do; micro-batches move to the device for training.
    enc, out = enc.to("cpu"), out.cpu()
    return experience_from_tokens(enc, out[:, enc["input_ids"].shape[1]:], tokenizer, prompts, n)


def experience_from_tokens(enc, response: torch.Tensor, tokenizer, prompts: Sequence[str], n: int) -> Experience:
    """The Experience of left-padded prompts ``enc`` and their n right-padded ``response`` rows each:
    one layout for HF generate and the vLLM engine (solve/vllm_rollout.py), so training cannot tell them apart."""
    is_eos = response == tokenizer.eos_token_id
    # Tokens after the first eos are padding (generate pads finished rows, possibly with eos itself).
    action_mask = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
    response = response.masked_fill(~action_mask, tokenizer.pad_token_id)
    prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0)
    response_length = action_mask.sum(dim=1)
    return Experience(
        sequences=torch.cat([enc["input_ids"].repeat_interleave(n, dim=0), response], dim=1),
        attention_mask=torch.cat([prompt_mask, action_mask.long()], dim=1),
        action_mask=action_mask,
        response_length=response_length.float(),
        truncated=~is_eos.any(dim=1),
        total_length=(prompt_mask.sum(dim=1) + response_length).float(),
        prompts=[p for p in prompts for _ in range(n)],
    )


def to_rollouts(experience: Experience, tokenizer, prompts: Sequence[str], n: int) -> Rollouts:
    """The strings OpenRLHF gives a reward: query = prompt + response tokens decoded with special tokens."""
    queries, responses = [], []
    for sequence, mask, action_mask in zip(experience.sequences, experience.attention_mask, experience.action_mask):
        queries.append(tokenizer.decode(sequence[mask.bool()], skip_special_tokens=False))
        response = sequence[-action_mask.shape[0]:][action_mask]
        responses.append(tokenizer.decode(response, skip_special_tokens=True))
    truncated = experience.truncated.tolist()
    rows = range(len(prompts))
    return Rollouts(prompts=list(prompts), responses=[responses[i * n:(i + 1) * n] for i in rows],
                    queries=[queries[i * n:(i + 1) * n] for i in rows],
                    truncated=[truncated[i * n:(i + 1) * n] for i in rows])


def _forward_in_chunks(actor, experience: Experience, chunk: int) -> torch.Tensor:
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    parts = []
    for start in range(0, len(experience.sequences), chunk):
        rows = slice(start, start + chunk)
        parts.append(actor(experience.sequences[rows].to(device), experience.action_mask[rows].to(device),
                           attention_mask=experience.attention_mask[rows].to(device)).float().cpu())
    return torch.cat(parts)


@torch.no_grad()
def attach_log_probs(experience: Experience, actor, reference, args) -> None:
    """``action_log_probs`` (and with a reference ``base_action_log_probs`` and ``kl``), in place."""
    was_training = actor.training
    actor.eval()
    experience.action_log_probs = _forward_in_chunks(actor, experience, args.rollout.micro_batch_size)
    actor.train(was_training)
    if reference is not None:
        experience.base_action_log_probs = _forward_in_chunks(reference, experience, args.rollout.micro_batch_size)
    if reference is not None and not args.algo.kl.use_loss:
        experience.kl = compute_approx_kl(experience.action_log_probs, experience.base_action_log_probs,
                                          kl_estimator=args.algo.kl.estimator)
    else:
        experience.kl = torch.zeros_like(experience.action_log_probs)
    experience.info["kl"] = masked_mean(experience.kl, experience.action_mask, dim=-1)


def group_baseline(rewards: torch.Tensor, estimator: str) -> torch.Tensor:
    """Rewards ``[P, n]`` minus each group's baseline, as the estimator defines it."""
    n = rewards.shape[1]
    if estimator == "rloo":  # leave-one-out mean of the other n - 1 samples
        return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    if estimator in ("reinforce_baseline", "dr_grpo"):
        return rewards - rewards.mean(dim=1, keepdim=True)
    if estimator == "group_norm":  # GRPO
        return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-9)
    if estimator == "reinforce":
        return rewards
    raise ValueError(f"unknown advantage estimator {estimator!r}; this trainer offers {', '.join(ESTIMATORS)}")


def discounted_returns(token_rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over the response tokens."""
    token_rewards = token_rewards * action_mask
    if gamma == 1.0:
        return token_rewards.flip(dims=[1]).cumsum(dim=1).flip(dims=[1])
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype)
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def _global_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        values = values.to(device)
        dist.all_reduce(values)
    return values.cpu()


@torch.no_grad()
def compute_advantages(experience: Experience, rewards: torch.Tensor, args, kl_coef: float) -> None:
    """``advantages`` and ``returns`` for this rank's samples, from its rewards ``[P, n]`` (in place).

    Groups with a non-finite reward are excluded: their advantages are 0 and they do not enter the
    whitening statistics (which, for reinforce and reinforce_baseline, span all ranks as upstream's
    span the whole rollout batch).
    """
    estimator = args.algo.advantage.estimator
    valid_group = torch.isfinite(rewards).all(dim=1)
    clean = torch.where(valid_group[:, None], rewards.float(), torch.zeros_like(rewards.float()))
    shaped = group_baseline(clean, estimator).reshape(-1)
    valid = valid_group.repeat_interleave(rewards.shape[1])
    experience.rewards = clean.reshape(-1)
    experience.info["group_reward_std"] = clean.std(dim=1).repeat_interleave(rewards.shape[1])

    token_rewards = compute_reward(shaped, kl_coef, experience.kl, action_mask=experience.action_mask,
                                   reward_clip_range=args.reward.clip_range)
    gamma = args.algo.advantage.gamma if estimator == "reinforce" else 1.0  # upstream forces 1 for the others
    returns = discounted_returns(token_rewards, experience.action_mask, gamma)
    advantages = returns.clone()
    if estimator in ("reinforce", "reinforce_baseline"):
        mask = experience.action_mask * valid[:, None]
        count, total = _global_sum(torch.stack([mask.sum().float(), (advantages * mask).sum().float()]))
        mean = total / count.clamp(min=1)
        rstd = 1.0
        if not args.algo.advantage.no_std_norm:
            var = _global_sum(((advantages - mean).pow(2) * mask).sum().float().reshape(1))[0] / count.clamp(min=1)
            rstd = var.clamp(min=1e-8).rsqrt()
        advantages = (advantages - mean) * rstd
    experience.returns = returns
    experience.advantages = advantages * valid[:, None]
    experience.info["return"] = token_rewards.sum(dim=-1)


def _micro_batches(size: int, micro: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(size, generator=generator)
    return [order[start:start + micro] for start in range(0, size, micro)]


def _device():
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def policy_update(actor, optimizer, scheduler, strategy, experience: Experience, args, kl_coef: float,
                  generator: torch.Generator, ema_model=None) -> dict:
    """``--train.max_epochs`` passes of OpenRLHF's PolicyLoss over this rank's samples.

    As upstream's ``ActorPPOTrainer.training_step``: ``--actor.entropy_coef`` subtracts the
    token-aggregated entropy (0 only logs it), ``--actor.aux_loss_coef`` adds a MoE model's
    load-balancing loss, and ``ema_model`` (``--train.enable_ema``) follows every optimizer step.
    """
    loss_fn = PolicyLoss(clip_eps_low=args.actor.eps_clip_low_high[0], clip_eps_high=args.actor.eps_clip_low_high[1],
                         dual_clip=args.actor.dual_clip, token_level_loss=args.actor.loss_agg_mode == "token-mean",
                         policy_loss_type=args.actor.policy_loss_type)
    entropy_coef, aux_loss_coef = args.actor.entropy_coef, args.actor.aux_loss_coef
    actor.train()
    sums = {"policy_loss": 0.0, "ppo_clip_ratio": 0.0, "ppo_kl": 0.0, "kl_loss": 0.0}
    sums.update({"entropy_loss": 0.0} if entropy_coef is not None else {})
    sums.update({"aux_loss": 0.0} if aux_loss_coef else {})
    count, grad_norms = 0, []
    for _ in range(args.train.max_epochs):
        batches = _micro_batches(len(experience.sequences), args.train.micro_batch_size, generator)
        for rows, norm in iter_grad_accum_global_norm(batches, strategy, strategy.accumulated_gradient,
                                                      lambda rows: experience.action_mask[rows]):
            mask = experience.action_mask[rows].to(_device())
            log_probs, output = actor(experience.sequences[rows].to(_device()), mask,
                                      attention_mask=experience.attention_mask[rows].to(_device()),
                                      return_output=True, return_entropy=entropy_coef is not None)
            old = experience.action_log_probs[rows].to(log_probs)
            loss, clip_ratio, ppo_kl, _, _ = loss_fn(log_probs, old, experience.advantages[rows].to(log_probs),
                                                     action_mask=mask, **norm)
            sums["policy_loss"] += loss.item()
            sums["ppo_clip_ratio"] += clip_ratio.item()
            sums["ppo_kl"] += ppo_kl.item()
            if args.algo.kl.use_loss and experience.base_action_log_probs is not None:
                kl = compute_approx_kl(log_probs, experience.base_action_log_probs[rows].to(log_probs),
                                       log_probs_old=old, kl_estimator=args.algo.kl.estimator,
                                       unbiased_gradient=args.algo.kl.unbiased_gradient)
                kl_loss = aggregate_loss(kl, mask, **norm)
                sums["kl_loss"] += kl_loss.item()
                loss = loss + kl_coef * kl_loss
            if entropy_coef is not None:
                entropy_loss = aggregate_loss(output.entropy[:, -mask.shape[1]:], mask, **norm)
                sums["entropy_loss"] += entropy_loss.item()
                loss = loss - entropy_coef * entropy_loss
            if aux_loss_coef:
                sums["aux_loss"] += output.aux_loss.item()
                loss = loss + aux_loss_coef * output.aux_loss
            strategy.backward(loss, actor, optimizer)
            strategy.optimizer_step(optimizer, actor, scheduler, name="actor")
            if ema_model is not None:
                strategy.moving_average(actor, ema_model, args.train.ema_beta, _device())
            count += 1
            if count % strategy.accumulated_gradient == 0:
                grad_norms.append(strategy.get_grad_norm(actor))
    metrics = strategy.all_reduce({key: value / max(count, 1) for key, value in sums.items()})  # mean over ranks
    metrics["actor_grad_norm"] = grad_norms[-1] if grad_norms else 0.0
    metrics["actor_lr"] = scheduler.get_last_lr()[0]
    return metrics


def best_and_worst(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt: index of the max and of the min finite reward, and whether they form a pair.

    No pair when fewer than two rewards are finite or the best ties the worst (nothing to prefer).
    Ties between responses resolve to the first index, so the pair is the same on every run.
    """
    finite = torch.isfinite(rewards)
    chosen = rewards.masked_fill(~finite, float("-inf")).argmax(dim=1)
    rejected = rewards.masked_fill(~finite, float("inf")).argmin(dim=1)
    rows = torch.arange(len(rewards))
    has_pair = (finite.sum(dim=1) >= 2) & (rewards[rows, chosen] > rewards[rows, rejected])
    return chosen, rejected, has_pair


def online_dpo_update(actor, reference, optimizer, scheduler, strategy, experience: Experience,
                      rewards: torch.Tensor, args, loss_fn: PreferenceLoss, generator: torch.Generator,
                      ema_model=None) -> dict:
    """OAIF: one DPO pair per prompt (best vs worst of its n samples), against the reference.

    ``--train.micro_batch_size`` and ``--train.batch_size`` count pairs here. A prompt without a
    pair still takes its slot in a micro-batch (so every rank steps alike) with loss weight 0.
    """
    n = rewards.shape[1]
    chosen, rejected, has_pair = best_and_worst(rewards)
    first = torch.arange(len(rewards)) * n
    pair_rows = torch.stack([first + chosen, first + rejected], dim=1)  # [P, 2] rows of the experience
    with torch.no_grad():
        reference_logps = _forward_in_chunks(reference, experience, args.rollout.micro_batch_size).sum(dim=-1)
    actor.train()
    sums, count, grad_norms = {"dpo_loss": 0.0, "margin_sum": 0.0}, 0, []
    for _ in range(args.train.max_epochs):
        for prompts in _micro_batches(len(rewards), args.train.micro_batch_size, generator):
            rows = pair_rows[prompts].T.reshape(-1)  # chosen rows, then rejected rows
            mask = experience.action_mask[rows].to(_device())
            logps = actor(experience.sequences[rows].to(_device()), mask,
                          attention_mask=experience.attention_mask[rows].to(_device())).sum(dim=-1)
            policy_chosen, policy_rejected = logps.chunk(2)
            reference_chosen, reference_rejected = reference_logps[rows].to(logps).chunk(2)
            keep = has_pair[prompts].to(logps.device)
            if keep.any():
                loss, chosen_reward, rejected_reward, _ = loss_fn(
                    policy_chosen_logps=policy_chosen[keep], policy_rejected_logps=policy_rejected[keep],
                    reference_chosen_logps=reference_chosen[keep], reference_rejected_logps=reference_rejected[keep])
                # Pairless slots weigh 0: the step's loss is a mean over all pair slots.
                loss = loss * keep.float().mean()
                sums["margin_sum"] += (chosen_reward - rejected_reward).sum().item()
            else:
                loss = logps.sum() * 0.0  # keeps the graph, so DeepSpeed's backward/step stay in lockstep
            sums["dpo_loss"] += loss.item()
            strategy.backward(loss, actor, optimizer)
            strategy.optimizer_step(optimizer, actor, scheduler, name="actor")
            if ema_model is not None:  # --train.enable_ema
                strategy.moving_average(actor, ema_model, args.train.ema_beta, _device())
            count += 1
            if count % strategy.accumulated_gradient == 0:
                grad_norms.append(strategy.get_grad_norm(actor))
    totals = strategy.all_reduce({"dpo_loss": sums["dpo_loss"] / max(count, 1), "margin_sum": sums["margin_sum"],
                                  "pairs": float(has_pair.sum()) * args.train.max_epochs}, op="sum")
    metrics = {"dpo_loss": totals["dpo_loss"] / strategy.world_size,
               "dpo_reward_margin": totals["margin_sum"] / max(totals["pairs"], 1.0),
               "dpo_pairs": totals["pairs"] / args.train.max_epochs}
    metrics["actor_grad_norm"] = grad_norms[-1] if grad_norms else 0.0
    metrics["actor_lr"] = scheduler.get_last_lr()[0]
    return metrics


def rewrite_chosen_responses(experience: Experience, rewards: torch.Tensor, prompts: Sequence[str],
                             responses: Sequence[Sequence[str]], tokenizer, generate, max_tokens: int) -> Counter:
    """``--eva.rewrite_chosen``: each pair's chosen row becomes the creator's improved response, in place.

    ``prompts`` are the raw user prompts (what the rewrite frame quotes) and ``responses`` the
    decoded samples ``[P][n]``. A usable rewrite (``openrlhf_eva.solve.rewriter``) is tokenised
    after the row's prompt tokens and ends with eos; it may use the rollout's whole response budget
    ``max_tokens``, the response columns widening with padding where it is longer than every
    sample. One that does not fit is kept out as ``too_many_tokens``. Returns the rewriter's counts:
    ``rewritten`` and ``kept_<reason>`` (the sampled response stays).
    """
    n = rewards.shape[1]
    chosen, _, has_pair = best_and_worst(rewards)
    pairs = has_pair.nonzero().flatten().tolist()
    result = rewrite_chosen(generate, [prompts[i] for i in pairs], [responses[i][int(chosen[i])] for i in pairs])
    counts = Counter(result.counts)
    new_responses = {}  # experience row -> response token ids, eos included
    for i, text, usable in zip(pairs, result.texts, result.rewritten):
        if not usable:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > max_tokens:
            counts["rewritten"] -= 1
            counts["kept_too_many_tokens"] += 1
            continue
        new_responses[i * n + int(chosen[i])] = ids
    if not new_responses:
        return +counts

    width = max(len(ids) for ids in new_responses.values())
    extra = width - experience.action_mask.shape[1]
    if extra > 0:  # right of every response is padding: wider rows change no other row's log-probs
        rows = len(experience.sequences)
        experience.sequences = torch.cat([experience.sequences, experience.sequences.new_full(
            (rows, extra), tokenizer.pad_token_id)], dim=1)
        experience.attention_mask = torch.cat([experience.attention_mask,
                                               experience.attention_mask.new_zeros(rows, extra)], dim=1)
        experience.action_mask = torch.cat([experience.action_mask,
                                            experience.action_mask.new_zeros(rows, extra)], dim=1)
    start = experience.sequences.shape[1] - experience.action_mask.shape[1]  # first response column
    for row, ids in new_responses.items():
        experience.sequences[row, start:] = tokenizer.pad_token_id
        experience.sequences[row, start:start + len(ids)] = torch.tensor(ids)
        experience.action_mask[row] = False
        experience.action_mask[row, :len(ids)] = True
        experience.attention_mask[row, start:] = experience.action_mask[row].long()
        experience.response_length[row] = len(ids)
        experience.truncated[row] = False
        experience.total_length[row] = experience.attention_mask[row].sum()
    return +counts


def eval_metrics(rows: list[tuple[str, list, list, list]], n: int) -> dict:
    """Upstream's eval logs (ppo_trainer.py ``compute_eval_metrics``) from (datasource, rewards,
    response lengths, truncated) of each eval prompt's n samples: per datasource pass1 (the mean
    reward), pass{n} (the mean of each prompt's best reward), length and truncation; then overall."""
    by_source: dict[str, list] = {}
    for source, *samples in rows:
        by_source.setdefault(source, []).append(samples)
    logs = {}
    for source, group in by_source.items():
        rewards, lengths, truncated = (torch.tensor([row[i] for row in group], dtype=torch.float32) for i in range(3))
        if n > 1:
            logs[f"eval_{source}_pass{n}"] = float(rewards.max(dim=1).values.mean())
        logs[f"eval_{source}_pass1"] = float(rewards.mean())
        logs[f"eval_{source}_response_length_mean"] = float(lengths.mean())
        logs[f"eval_{source}_truncated_rate"] = float(truncated.mean())
    lengths = [x for _, _, row_lengths, _ in rows for x in row_lengths]
    truncated = [x for _, _, _, row_truncated in rows for x in row_truncated]
    logs["eval_response_length_mean"] = sum(lengths) / len(lengths)
    logs["eval_truncated_rate"] = sum(truncated) / len(truncated)
    logs["eval_num_samples"] = float(len(lengths))
    return logs


def merge_groups(parts: Sequence[tuple[Experience, Sequence[int]]], n: int, pad_token_id: int) -> Experience:
    """The samples of the chosen prompt groups of several rollouts, as one Experience laid out as
    ``generate`` lays it out (left-padded prompts, right-padded responses, the response in the last
    columns): dynamic filtering trains on groups kept from several rollout batches of different widths.
    Upstream's ``Experience.concat_experiences`` pads every row on the right, which would move the
    prompt/response boundary, so rows are re-padded on each side of it here."""
    rows = [(exp, [g * n + k for g in groups for k in range(n)]) for exp, groups in parts if len(groups)]
    prompt_width = max(exp.sequences.shape[1] - exp.action_mask.shape[1] for exp, _ in rows)
    response_width = max(exp.action_mask.shape[1] for exp, _ in rows)
    pieces: dict[str, list] = {"sequences": [], "attention_mask": [], "action_mask": []}
    for exp, index in rows:
        split = exp.sequences.shape[1] - exp.action_mask.shape[1]
        left, right = prompt_width - split, response_width - exp.action_mask.shape[1]
        for name, pad in (("sequences", pad_token_id), ("attention_mask", 0)):
            value = getattr(exp, name)[index]
            pieces[name].append(torch.cat([torch.nn.functional.pad(value[:, :split], (left, 0), value=pad),
                                           torch.nn.functional.pad(value[:, split:], (0, right), value=pad)], dim=1))
        pieces["action_mask"].append(torch.nn.functional.pad(exp.action_mask[index], (0, right), value=False))
    merged = {name: torch.cat(values) for name, values in pieces.items()}
    for name in ("rewards", "scores", "response_length", "truncated", "total_length"):
        values = [getattr(exp, name) for exp, _ in rows]
        if all(v is not None for v in values):
            merged[name] = torch.cat([v[index] for v, (_, index) in zip(values, rows)])
    return Experience(**merged, prompts=[exp.prompts[i] for exp, index in rows for i in index])
