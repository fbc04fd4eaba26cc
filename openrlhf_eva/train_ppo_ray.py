"""`python -m openrlhf_eva.train_ppo_ray`: OpenRLHF's Ray PPO/RLOO entry point with online eva.

Every upstream flag keeps its upstream meaning: this runs upstream's own parser and `train(args)`
(`openrlhf_eva.upstream.run_upstream_cli`). Without `--eva.enable` it is plain upstream
train_ppo_ray. With it, upstream's `train()` builds `EvaPPOTrainer` instead of `PPOTrainer`, which
trains on prompts from eva's prioritized generative buffer (EVA.md, "Online eva"), kept by
`openrlhf_eva.creator.online.OnlinePromptSource`:

- each rollout batch of `--rollout.batch_size` prompts follows the phase plan: warm-up (seeds
  only) -> mix-up (`--eva.ratio_evol` from the buffer, drawn by `--eva.sample_mode`: weighted by
  informativeness by default, or greedy, uniform; the rest from the seeds) -> bootstrap (buffer
  only, once the seeds run out);
- after experience making, each prompt's n rewards give its informativeness (`--eva.metric`,
  default A_avg); the top `--eva.top_frac` of the batch are evolved into `--eva.n_new` children each
  (`--eva.n_new_bootstrap` in bootstrap) with `--eva.evolver`, after the PPO update and the weight
  sync, so an LLM evolver (`evol_instruct`, `evol_complexity`, `evol_quality`, `self_instruct`,
  `tree_bon`, `distilabel`; options in `--eva.evolver_options`, `--eva.evolve_parents`) rewrites
  with the current policy through the same vLLM engines, or with the model `--eva.evolver_model`
  served at `--eva.evolver_url` (OpenAI-compatible; key from `--eva.evolver_api_key_env`); with
  `--eva.evolve_feedback` it sees each parent's best and worst response and their rewards, decoded
  from the Experiences;
- children pass `--eva.filters` (`--eva.filter_options`, `--eva.eval_prompts`) and enter the
  buffer with their parent's informativeness; trained
  buffer prompts are popped, and pushes evict the oldest beyond `--eva.buffer_size`;
- the run trains on `--eva.total_prompts` prompts (0: as many as there are seeds, the paper's
  "1x"), in whole rollout batches, and `max_steps` (the LR schedule) is sized from that budget
  rather than from the seed set.

Metrics go through upstream's loggers (wandb / tensorboard) as `train/eva/*`, one point per step
(the source's numeric metrics: phase_index 0/1/2, batch_from_buffer, batch_info_mean, seeds_left,
buffer_size, children_generated / children_accepted, rejected_<filter>, ...), plus
`train/timing/eva_evolve`. The final buffer is written to `{--ckpt.output_dir}/eva_buffer.jsonl` on
the node running the trainer actor. Seed prompts are upstream's own `PromptDataset` items (same
templating, labels, datasources); the evolver rewrites their raw text.

Seams in OpenRLHF 0.11.2, each with the upstream patch that makes it official; where the installed
OpenRLHF has the patch (`openrlhf_eva.compat.seams`), the official seam is used instead:
- cli/train_ppo_ray.py:148 `train()` imports `PPOTrainer` from `openrlhf.trainer.ppo_trainer` when
  it runs; `main()` installs `EvaPPOTrainer` there for the run. Patched: `train(args,
  trainer_cls=EvaPPOTrainer)` (patches/0005-ppo-selectable-trainer-class.patch, with 0003).
- trainer/ppo_trainer.py:477-487 builds one prompts dataloader and hands it to `fit()` (len,
  state_dict) and to `SamplesGenerator` (batches); `EvaPPOTrainer.__init__` replaces both
  references with `EvaPromptLoader`, which yields the dataloader's `(datasources, prompts, labels,
  images)` items. Patched: `self.set_prompt_source(loader)` (patches/0004-ppo-pluggable-prompt-source.patch).
- trainer/ppo_trainer.py:72-78 sizes `max_steps` from `len(prompts_dataset)`; `EvaPPOTrainer` uses
  the prompt budget in the same formula. Patched (0004): upstream takes it from `len(loader)`.
- trainer/ppo_trainer.py:227 `_compute_rollout_stats(experiences)` is the first trainer method that
  sees the whole batch of Experiences; the override reads per-prompt rewards (and, for
  `--eva.evolve_feedback`, responses) there.
- trainer/ppo_trainer.py:213-264 `train_step`: the override evolves after upstream's step returns.

Limits: the synchronous trainer only (`--train.async_enable` is refused), one rollout batch per
vLLM call and no dynamic filtering (the source is told each batch's rewards before it draws the
next); `--train.num_episodes` must stay 1 (the budget sets the run's length); children are
single-turn text prompts without images; LLM-evolved children have no label (use `--eva.evolver
task` for verifiable rewards); the creator is the policy's vLLM engines or a served model
(`--eva.evolver_model` alone, a checkpoint loaded beside the trainer, is refused).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
from collections import Counter
from typing import Any, Callable, Optional, Sequence
from unittest import mock

import ray
import torch
from vllm import SamplingParams

import openrlhf.trainer.ppo_trainer
from openrlhf.datasets.prompts_dataset import preprocess_data
from openrlhf.datasets.utils import blending_datasets
from openrlhf.trainer.ppo_trainer import PPOTrainer
from openrlhf.trainer.ray.vllm_engine import batch_vllm_engine_call
from openrlhf.utils.logging_utils import init_logger

from openrlhf_eva.creator import (
    DEFAULT_FILTERS,
    EVOLVERS,
    METRICS,
    SAMPLERS,
    OnlineSchedule,
    PluginError,
    PromptBuffer,
    TaskEvolver,
    build_evolver,
    load_plugin,
)
from openrlhf_eva.creator.flags import (add_creator_flags, add_curriculum_flags, build_creator_filters,
                                        curriculum_options, evolver_options)
from openrlhf_eva.compat import ray_cpu, seams
from openrlhf_eva.creator.online import OnlinePromptSource
from openrlhf_eva.generation import build_generator
from openrlhf_eva.upstream import run_upstream_cli

logger = init_logger(__name__)
METRICS_FILE = "eva_metrics.jsonl"


def add_eva_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("online eva (openrlhf_eva)")
    add = group.add_argument
    add("--eva.enable", action="store_true", default=False,
        help="train on prompts from eva's evolving buffer (off: plain upstream train_ppo_ray)")
    add("--eva.metric", default="A_avg", help="informativeness metric (paper online: A_avg)")
    add("--eva.sample_mode", default="weighted", help="how buffer prompts are drawn: weighted by info (the paper), "
        "greedy (the most informative), uniform, or a registered sampler")
    add("--eva.buffer_size", type=int, default=3200, help="prompts the buffer holds (paper: 3200)")
    add("--eva.top_frac", type=float, default=0.5, help="share of each batch evolved, most informative first")
    add("--eva.n_new", type=int, default=4, help="children per evolved prompt in warm-up and mix-up")
    add("--eva.n_new_bootstrap", type=int, default=2, help="children per evolved prompt in bootstrap")
    add("--eva.ratio_evol", type=float, default=0.5, help="share of a mix-up batch drawn from the buffer")
    add_curriculum_flags(add)
    add("--eva.total_prompts", type=int, default=0,
        help="prompts the run trains on, seeds and evolved (0: the number of seed prompts); sizes max_steps")
    add("--eva.evolver", default="evol_instruct",
        help="evol_instruct | evol_complexity | evol_quality | self_instruct | tree_bon | distilabel (LLM evolvers, "
             "on the policy's vLLM engines) | task | a registered evolver")
    add("--eva.evolver_path", default=None, help="the task evolver's Python file with evolve(prompt, label, rng)")
    add("--eva.evolve_max_new_tokens", type=int, default=512, help="token limit of one LLM evolver reply")
    add("--eva.filters", nargs="*", default=list(DEFAULT_FILTERS), help="filters children must pass")
    add_creator_flags(add)
    add("--eva.plugin", action="append", default=[], help="Python file registering metrics/evolvers/filters")


def resolve_eva_flags(flags: dict, parser: argparse.ArgumentParser) -> None:
    """Refuse, in the driver and before Ray starts, what the eva trainer would fail on later; make the
    plug-in and evolver paths absolute, since the trainer actor loads them in its own process."""
    if not flags["eva.enable"]:
        changed = [f"--{key}" for key in flags if key.startswith("eva.") and flags[key] != parser.get_default(key)]
        if changed:
            print(f"[openrlhf_eva] {' '.join(changed)} set without --eva.enable: plain upstream train_ppo_ray runs")
        return
    flags["eva.plugin"] = [os.path.abspath(path) for path in flags["eva.plugin"]]
    if flags["eva.evolver_path"]:
        flags["eva.evolver_path"] = os.path.abspath(flags["eva.evolver_path"])
    try:
        for path in flags["eva.plugin"]:
            load_plugin(path)
        METRICS.get(flags["eva.metric"])
        SAMPLERS.get(flags["eva.sample_mode"])
        EVOLVERS.get(flags["eva.evolver"])
        eva = argparse.Namespace(**{key[4:]: value for key, value in flags.items() if key.startswith("eva.")})
        evolver_options(eva)
        build_creator_filters(eva)
        OnlineSchedule(PromptBuffer(flags["eva.buffer_size"]), flags["eva.top_frac"], flags["eva.n_new"],
                       flags["eva.n_new_bootstrap"], flags["eva.ratio_evol"])
    except (ValueError, OSError, PluginError) as error:  # UnknownNameError is a ValueError; OSError: eval files
        parser.error(f"--eva.*: {error}")
    if flags["rollout.n_samples_per_prompt"] < 2:
        parser.error("--eva.enable needs --rollout.n_samples_per_prompt >= 2: informativeness compares a "
                     "prompt's responses")
    if flags["train.async_enable"]:
        parser.error("--eva.enable supports the synchronous trainer only; drop --train.async_enable")
    if flags["algo.dynamic_filtering_enable"]:
        parser.error("--eva.enable replaces --algo.dynamic_filtering_enable: eva already picks informative prompts, "
                     "and refills would draw prompts before the batch's rewards reach the buffer")
    if flags["rollout.vllm_generate_batch_size"] not in (None, flags["rollout.batch_size"]):
        parser.error("--eva.enable draws one rollout batch at a time: leave --rollout.vllm_generate_batch_size unset")
    if flags["train.num_episodes"] != 1:
        parser.error("--eva.enable: --eva.total_prompts sets the run's length; leave --train.num_episodes at 1")
    if flags["eva.total_prompts"] < 0:
        parser.error(f"--eva.total_prompts must be >= 0, got {flags['eva.total_prompts']}")
    if flags["eva.evolver"] == "task" and not flags["eva.evolver_path"]:
        parser.error("--eva.evolver task needs --eva.evolver_path (a file defining evolve(prompt, label, rng))")
    if flags["eva.evolver_url"] and not flags["eva.evolver_model"]:
        parser.error("--eva.evolver_url needs --eva.evolver_model, the served model's name")
    if flags["eva.evolver_model"] and not flags["eva.evolver_url"]:
        parser.error("--eva.evolver_model names a model served at --eva.evolver_url here: the Ray path's creator "
                     "is the policy's vLLM engines or such a server, not a checkpoint loaded beside the trainer")
    if (getattr(EVOLVERS.get(flags["eva.evolver"]), "uses_llm", False) and not flags["vllm.num_engines"]
            and not flags["eva.evolver_url"]):
        parser.error(f"--eva.evolver {flags['eva.evolver']} rewrites with the vLLM engines: set --vllm.num_engines "
                     "(or serve the creator at --eva.evolver_url)")
    if flags["eva.evolve_max_new_tokens"] < 1:
        parser.error("--eva.evolve_max_new_tokens must be >= 1")


def user_text(value: Any) -> str:
    """The text the evolver rewrites: the prompt itself, or the last user turn of a chat."""
    if isinstance(value, str):
        return value
    turns = [message.get("content") for message in value if message.get("role") == "user"]
    return turns[-1] if turns and isinstance(turns[-1], str) else str(value)


def load_seed_texts(strategy) -> list[str]:
    """The raw seed texts, in the order of upstream's PromptDataset, which keeps only templated prompts.

    Loads the prompt data again with upstream's own calls (ppo_trainer.py:30-40); patch 0004 would
    hand the raw rows to the prompt source instead.
    """
    args = strategy.args
    rows = blending_datasets(args.data.prompt_dataset, args.data.prompt_probs, strategy, args.train.seed,
                             max_count=args.data.max_samples, dataset_split=args.data.prompt_split)
    rows = rows.select(range(min(args.data.max_samples, len(rows))))
    return [user_text(value) for value in rows[args.data.input_key]]


def format_prompt(text: str, args, tokenizer) -> str:
    """`text` templated exactly as upstream's PromptDataset templates a seed (prompts_dataset.py:71-85)."""
    apply_chat_template = tokenizer.apply_chat_template if args.data.apply_chat_template else None
    prompt, _ = preprocess_data({args.data.input_key: text}, args.data.input_template, args.data.input_key,
                                None, apply_chat_template)
    return prompt


def vllm_generate(engines: list, tokenizer, args) -> Callable[[list[str]], list[str]]:
    """`generate(texts) -> texts` over the trainer's vLLM engines, for the evol_instruct evolver.

    Each text is templated like a training prompt and sent as token ids to
    `RolloutRayActor.generate` (vllm_engine.py:153), round-robin over the engines. In sleep mode the
    engines are woken and put back to sleep around the call, as SamplesGenerator does around a
    rollout (samples_generator.py:106,120). A text that leaves no room to answer within
    --data.max_len gets "" (the evolver counts it unparsable).
    """

    def generate(texts: list[str]) -> list[str]:
        requests = {}
        for k, text in enumerate(texts):
            ids = tokenizer(format_prompt(text, args, tokenizer), add_special_tokens=False)["input_ids"]
            room = min(args.eva.evolve_max_new_tokens, args.data.max_len - len(ids))
            if room >= 1:
                params = SamplingParams(temperature=args.rollout.temperature, top_p=args.rollout.top_p,
                                        max_tokens=room, skip_special_tokens=True)
                requests[k] = (ids, params)
        outputs = [""] * len(texts)
        if args.vllm.enable_sleep:
            batch_vllm_engine_call(engines, "wake_up")
        try:
            refs = [engines[n % len(engines)].generate.remote(ids, params)
                    for n, (ids, params) in enumerate(requests.values())]
            for k, request_output in zip(requests, ray.get(refs)):
                outputs[k] = request_output.outputs[0].text
        finally:
            if args.vllm.enable_sleep:
                batch_vllm_engine_call(engines, "sleep")
        return outputs

    return generate


def build_online_evolver(args, engines: list, tokenizer):
    if args.eva.evolver == "task":
        return TaskEvolver(args.eva.evolver_path)
    options = evolver_options(args.eva)
    if not getattr(EVOLVERS.get(args.eva.evolver), "uses_llm", False):
        return build_evolver(args.eva.evolver, **options)
    if args.eva.evolver_url:
        generate = build_generator("openai", args.eva.evolver_model, url=args.eva.evolver_url,
                                   api_key_env=args.eva.evolver_api_key_env, seed=args.train.seed,
                                   max_new_tokens=args.eva.evolve_max_new_tokens,
                                   temperature=args.rollout.temperature, top_p=args.rollout.top_p)
    else:
        generate = vllm_generate(engines, tokenizer, args)
    return build_evolver(args.eva.evolver, generate=generate, **options)


def prompt_rollouts(experiences: Sequence, n_samples_per_prompt: int,
                    tokenizer=None) -> list[tuple[str, list[float], Optional[list[str]]]]:
    """`(prompt, its n rewards, its n responses)` per prompt of a batch of Experiences from
    `make_experience_batch`; responses are None unless a `tokenizer` is given to decode them.

    Rollout sample i belongs to prompt group i // n: a prompt's n samples are generated together and
    stay contiguous (experience_maker.py:250-256), and `Experience.index` keeps i through
    micro-batching and dynamic-batch reordering. Rewards are `info["reward"]`, after length
    penalties, as the advantage estimator saw them. A response is the sample's action tokens
    (`action_mask` covers the last positions of `sequences`, as `Actor.forward` reads them),
    decoded without special tokens, as train_rloo hands responses to the creator.
    """
    groups: dict[int, tuple[str, dict[int, tuple[float, Optional[str]]]]] = {}
    for experience in experiences:
        if "reward" not in experience.info:
            continue
        samples = zip(experience.index, experience.prompts, experience.info["reward"].tolist())
        for row, (index, prompt, reward) in enumerate(samples):
            response = None
            if tokenizer is not None:
                action_mask = experience.action_mask[row].bool()
                action_tokens = experience.sequences[row][-len(action_mask):][action_mask]
                response = tokenizer.decode(action_tokens, skip_special_tokens=True)
            groups.setdefault(index // n_samples_per_prompt, (prompt, {}))[1][index] = (float(reward), response)
    rollouts = []
    for _, (prompt, samples) in sorted(groups.items()):
        ordered = [samples[i] for i in sorted(samples)]
        responses = [response for _, response in ordered] if tokenizer is not None else None
        rollouts.append((prompt, [reward for reward, _ in ordered], responses))
    return rollouts


class EvaPromptLoader:
    """`OnlinePromptSource` dressed as upstream's prompts dataloader, for SamplesGenerator and fit().

    Iterating yields one prompt at a time as `([datasource], [prompt], [label], [image])`, the items
    of upstream's batch-size-1 dataloader, so `_collect_prompt_batch` (samples_generator.py:16)
    takes exactly the prompts it asks for. A rollout batch is drawn from the source when the queue
    runs dry, which in the synchronous trainer is after the previous batch was observed. Prompts go
    to vLLM templated like upstream's: seeds exactly as upstream's PromptDataset templated them,
    evolved prompts through `format_prompt`. `len()` is the prompt budget; `state_dict` /
    `load_state_dict` let upstream's checkpoints (ppo_trainer.py:518,558) resume the buffer too, and a
    creator served at --eva.evolver_url its call count (which seeds its calls).
    """

    def __init__(self, source: OnlinePromptSource, format_prompt: Callable[[str], str], n_samples_per_prompt: int):
        self.source, self.format_prompt, self.n = source, format_prompt, n_samples_per_prompt
        self.queue: list[tuple[str, str, Any, Any]] = []  # (datasource, prompt, label, image) not yet handed out
        self.batch: list[str] = []  # templated prompts of the batch being trained, in the source's order

    def __len__(self) -> int:
        return self.source.num_batches * self.source.batch_size

    def __iter__(self) -> "EvaPromptLoader":
        return self

    def __next__(self) -> tuple[list, list, list, list]:
        if not self.queue:
            for item in self.source.next_batch():  # [] once the budget is spent or prompts ran out
                if item.buffer_id is None:
                    meta = item.metadata
                    self.queue.append((meta["datasource"], meta["upstream_prompt"], item.label, meta["image"]))
                else:  # an evolved prompt: no image, and "" as upstream's label when there is none
                    label = "" if item.label is None else item.label
                    self.queue.append((item.metadata.get("datasource", "eva"), self.format_prompt(item.prompt),
                                       label, None))
            self.batch = [prompt for _, prompt, _, _ in self.queue]
        if not self.queue:
            raise StopIteration
        datasource, prompt, label, image = self.queue.pop(0)
        return [datasource], [prompt], [label], [image]

    def observe(self, groups: Sequence[tuple[str, list[float], Optional[list[str]]]], step: int) -> dict[str, float]:
        """Hand the batch's `prompt_rollouts` to the source in batch order; returns its numeric metrics."""
        by_prompt: dict[str, list[tuple[list[float], Optional[list[str]]]]] = {}
        for prompt, rewards, responses in groups:
            by_prompt.setdefault(prompt, []).append((rewards, responses))
        missing = ([float("nan")] * self.n, None)  # a prompt without rollouts: its row counts as unscored
        rows = [by_prompt[prompt].pop(0) if by_prompt.get(prompt) else missing for prompt in self.batch]
        self.batch = []
        responses = None
        if any(texts is not None for _, texts in rows):
            responses = [texts if texts is not None else [""] * self.n for _, texts in rows]
        metrics = self.source.observe([rewards for rewards, _ in rows], step, responses)
        if "eva/evolve_error" in metrics:
            logger.warning(f"eva: the evolver failed this step: {metrics['eva/evolve_error']}")
        # Upstream's tensorboard logger takes scalars only (eva/phase has eva/phase_index beside it).
        return {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}

    def _creator_stats(self) -> Optional[Counter]:
        """The served creator's counters (OpenAIGenerator.stats: its call count sets each call's seed),
        or None when the evolver writes with the vLLM engines or without an LLM."""
        stats = getattr(getattr(self.source.evolver, "generate", None), "stats", None)
        return stats if isinstance(stats, Counter) else None

    def state_dict(self) -> dict:
        state = self.source.state_dict()
        if (stats := self._creator_stats()) is not None:  # a resumed creator draws the seeds it would have
            state["creator_stats"] = dict(stats)
        return state

    def load_state_dict(self, state: dict) -> None:
        # A run without --eva.enable checkpoints its StatefulDataLoader's state in the same place
        # (ppo_trainer.py:558); the source itself names another version, seed set or setting.
        if not isinstance(state, dict) or "seeds_fingerprint" not in state:
            saved = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"its prompt state was not saved by eva's prompt source (a run without --eva.enable?): "
                             f"{saved}")
        state = dict(state)
        saved_stats = state.pop("creator_stats", None)
        self.source.load_state_dict(state)
        if saved_stats is not None and (stats := self._creator_stats()) is not None:
            stats.clear()
            stats.update(saved_stats)


@ray.remote
class EvaPPOTrainer(PPOTrainer.__ray_actor_class__):
    """Upstream's synchronous PPO trainer with eva's prompt source, reward hook and evolve step."""

    def __init__(self, *args, **generate_kwargs) -> None:
        super().__init__(*args, **generate_kwargs)
        # Registries are per process and this actor is not the driver: load the plug-ins again.
        args, eva = self.args, self.args.eva
        for path in eva.plugin:
            load_plugin(path)
        # Seeds: upstream's PromptDataset items, served as they are, and their raw text, which the
        # evolver rewrites.
        dataset = self.prompts_dataloader.dataset
        texts = load_seed_texts(self.strategy)
        if len(texts) != len(dataset):
            raise ValueError(f"{len(texts)} raw seed texts for {len(dataset)} prompts in upstream's PromptDataset")
        seeds = [{"prompt": text, "label": label,
                  "metadata": {"datasource": datasource, "upstream_prompt": prompt, "image": image}}
                 for text, (datasource, prompt, label, image) in zip(texts, dataset)]
        source = OnlinePromptSource(
            seeds, args.rollout.batch_size, build_online_evolver(args, self.vllm_engines, self.tokenizer),
            total_prompts=eva.total_prompts or None, capacity=eva.buffer_size, top_frac=eva.top_frac,
            n_new=eva.n_new, n_new_bootstrap=eva.n_new_bootstrap, ratio_evol=eva.ratio_evol, metric=eva.metric,
            sample_mode=eva.sample_mode, filters=build_creator_filters(eva, self.tokenizer, args.data.max_len),
            seed=args.train.seed, **curriculum_options(eva),
        )
        templated = functools.partial(format_prompt, args=args, tokenizer=self.tokenizer)
        self.eva_loader = EvaPromptLoader(source, templated, args.rollout.n_samples_per_prompt)
        self.eva_rollouts: list[tuple[str, list[float], Optional[list[str]]]] = []
        if seams.ppo_prompt_source(type(self)):  # patches/0004: max_steps then follows len(eva_loader)
            self.set_prompt_source(self.eva_loader)
        else:
            # ppo_trainer.py:477-487: fit() and SamplesGenerator each hold the prompts dataloader.
            self.prompts_dataloader = self.samples_generator.prompts_dataloader = self.eva_loader
            # ppo_trainer.py:72-78 with the prompt budget for len(prompts_dataset); episodes are 1.
            num_samples = len(self.eva_loader) * args.rollout.n_samples_per_prompt
            self.max_steps = num_samples // args.train.batch_size * args.train.max_epochs

    def _compute_rollout_stats(self, experiences) -> dict:
        # ppo_trainer.py:227: the whole batch, before dynamic-batch balancing splits it over ranks.
        # Responses are decoded only for --eva.evolve_feedback, their one reader.
        tokenizer = self.tokenizer if self.args.eva.evolve_feedback else None
        self.eva_rollouts = prompt_rollouts(experiences, self.args.rollout.n_samples_per_prompt, tokenizer)
        return super()._compute_rollout_stats(experiences)

    def train_step(self, rollout_samples, global_step: int):
        # After upstream's step: the policy is updated and synced to vLLM, so evol_instruct rewrites
        # with the current policy, and the next batch is drawn from the updated buffer.
        status, global_step = super().train_step(rollout_samples, global_step)
        start = time.time()
        status.update(self.eva_loader.observe(self.eva_rollouts, global_step))
        status["timing/eva_evolve"] = time.time() - start
        # One line per step beside the model, as train_rloo writes it: upstream's loggers reach only
        # wandb and tensorboard.
        scalars = {key: value for key, value in status.items() if isinstance(value, (int, float))}
        os.makedirs(self.args.ckpt.output_dir, exist_ok=True)
        with open(os.path.join(self.args.ckpt.output_dir, METRICS_FILE), "a") as metrics:
            metrics.write(json.dumps({"step": global_step, **scalars}) + "\n")
        return status, global_step

    def init_checkpoint_states(self) -> dict:
        # fit() restores the prompt source from the checkpoint's client state (ppo_trainer.py:504-518);
        # restore it here first, so that a checkpoint of another run or version is named when refused.
        states = super().init_checkpoint_states()
        if states["global_step"] > 0:
            checkpoint = os.path.join(self.args.ckpt.path, "_actor")
            try:
                self.eva_loader.load_state_dict(states["data_loader_state_dict"])
            except (KeyError, ValueError) as error:
                raise ValueError(f"--ckpt.load_enable: checkpoint {checkpoint} cannot resume this eva run: {error}") \
                    from error
        return states

    def fit(self, global_step: int = 0) -> None:
        super().fit(global_step)
        source = self.eva_loader.source
        if source.batches_served < source.num_batches:
            logger.warning(f"eva: stopped after {source.batches_served} of {source.num_batches} batches: "
                           f"{source.exhausted}")
        os.makedirs(self.args.ckpt.output_dir, exist_ok=True)
        source.buffer.to_jsonl(os.path.join(self.args.ckpt.output_dir, "eva_buffer.jsonl"))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run upstream train_ppo_ray with `argv` (default: sys.argv[1:]); `--eva.enable` installs EvaPPOTrainer."""
    parsed, train_kwargs = {}, {}
    trainer_cls_seam = seams.ppo_trainer_cls(seams.cli_with_build_parser("openrlhf.cli.train_ppo_ray"))
    with contextlib.ExitStack() as installed:

        def add_flags(parser: argparse.ArgumentParser) -> None:
            parsed["parser"] = parser
            add_eva_flags(parser)

        def prepare(args: argparse.Namespace) -> None:
            flags, parser = vars(args), parsed["parser"]
            resolve_eva_flags(flags, parser)
            if not torch.cuda.is_available():  # logical GPUs, a worker setup hook and guards (compat.ray_cpu)
                for error in ray_cpu.cpu_flag_errors(flags):
                    parser.error(error)
                ray_cpu.init_ray(flags)
            if not getattr(args, "eva.enable"):
                return
            if trainer_cls_seam:  # patches/0005
                train_kwargs["trainer_cls"] = EvaPPOTrainer
            else:  # train() imports PPOTrainer from this module when it runs (train_ppo_ray.py:148).
                installed.enter_context(mock.patch.object(openrlhf.trainer.ppo_trainer, "PPOTrainer", EvaPPOTrainer))

        run_upstream_cli("openrlhf.cli.train_ppo_ray", argv, add_flags=add_flags, prepare=prepare,
                         prog="openrlhf_eva.train_ppo_ray", single_process_env=False, train_kwargs=train_kwargs)


if __name__ == "__main__":
    # Run the importable module's main, not this `__main__` copy: Ray ships EvaPPOTrainer to its
    # actor process by module path, and `__main__` is a different module there.
    from openrlhf_eva.train_ppo_ray import main as importable_main

    importable_main()
