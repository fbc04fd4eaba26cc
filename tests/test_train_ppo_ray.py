"""Glue of `openrlhf_eva.train_ppo_ray` against the real OpenRLHF 0.11.2 Ray PPO classes.

vLLM cannot be installed here and Ray's GPU actors cannot start, so (tests/fakes/):
- `vllm` is FakeVLLM, put in `sys.modules` by the `fakes` fixture and removed after this module,
  together with the OpenRLHF modules that imported it;
- actors run in this process (FakeActorClass); object refs, ray.get/wait/put are real Ray.
Everything else is real: upstream's parser, validation and `train()` up to the strategy, its
PromptDataset, SamplesGenerator, RolloutRayActor and SingleTurnAgentExecutor (over the fake vLLM
engine), RemoteExperienceMaker, RayActorGroup, PPOTrainer.fit and its tensorboard logger; eva's
buffer, schedule, metrics and the embedded task evolver and reward_func.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections import Counter
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import ray
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openrlhf_eva.compat import seams
from openrlhf_eva.creator import TaskEvolver
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.embedded.model import CHAT_TEMPLATE
from openrlhf_eva.embedded.tasks import solve
from openrlhf_eva.embedded import vocab

HERE = Path(__file__).resolve().parent
EMBEDDED = HERE.parent / "openrlhf_eva" / "embedded"
EXAMPLE = HERE.parent / "examples" / "gpu" / "train_ppo_ray_eva.sh"
REWARD_FUNC = str(EMBEDDED / "reward_func.py")
EVOLVE_FUNC = str(EMBEDDED / "evolve_func.py")

EVA_FLAGS = {
    "--eva.enable", "--eva.metric", "--eva.sample_mode", "--eva.buffer_size", "--eva.top_frac", "--eva.n_new",
    "--eva.n_new_bootstrap", "--eva.ratio_evol", "--eva.total_prompts", "--eva.evolver", "--eva.evolver_path",
    "--eva.evolve_max_new_tokens", "--eva.filters", "--eva.plugin", "--eva.evolver_options", "--eva.evolve_feedback",
    "--eva.evolve_parents", "--eva.filter_options", "--eva.eval_prompts", "--eva.evolver_model", "--eva.evolver_url",
    "--eva.evolver_api_key_env", "--eva.seed_replay", "--eva.seed_replay_order", "--eva.frontier_quantile",
    "--eva.frontier_window",
}
# Modules that import vllm at top, directly or through one that does; dropped after this file.
VLLM_DEPENDENTS = ("openrlhf.trainer.ray", "openrlhf.trainer.ppo", "openrlhf.cli.train_ppo_ray",
                   "openrlhf_eva.train_ppo_ray")

# 24 seeds, 8 prompts per rollout batch, a budget of 48 prompts = 6 steps; a buffer of 16 fills in
# one or two warm-up batches (4 parents x 4 children, minus filtered ones), then mix-up batches take
# 4 prompts from it, and once the seeds are used up bootstrap batches take 4 (--eva.seed_replay 0.5
# keeps 4 seed prompts in every batch).
NUM_SEEDS, BATCH, N, BUDGET, CAPACITY = 24, 8, 4, 48, 16
BUFFER_SHARE = {0: 0, 1: BATCH // 2, 2: BATCH - 4}  # phase_index (warmup, mixup, bootstrap) -> from buffer


def assert_follows_phase_plan(phases, from_buffer):
    assert len(phases) == BUDGET // BATCH
    assert phases == sorted(phases) and set(phases) == {0, 1, 2}
    assert from_buffer == [BUFFER_SHARE[phase] for phase in phases]


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # by name, so Ray's serializer pickles the fakes' classes by reference
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fakes():
    modules_before, environ_before = set(sys.modules), dict(os.environ)
    fake_vllm = load_by_path("fake_vllm", HERE / "fakes" / "fake_vllm.py")
    sys.modules.update(fake_vllm.fake_vllm_modules())
    fake_ray = load_by_path("fake_ray", HERE / "fakes" / "fake_ray.py")
    started_ray = not ray.is_initialized()
    if started_ray:  # one local Ray (~5 s) for the module: object refs, ray.get/wait/put are real
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    import openrlhf_eva.train_ppo_ray as eva_ppo
    from openrlhf.trainer.ppo_trainer import PPOTrainer

    yield SimpleNamespace(vllm=fake_vllm, ray=fake_ray, eva_ppo=eva_ppo, upstream_trainer=PPOTrainer)

    if started_ray:
        ray.shutdown()
    os.environ.clear()
    os.environ.update(environ_before)
    for name in set(sys.modules) - modules_before:
        if name.split(".")[0] in ("vllm", "fake_vllm", "fake_ray") or name.startswith(VLLM_DEPENDENTS):
            del sys.modules[name]


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A byte-level tokenizer with the embedded chat template (exact decode of any text) and seeds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("ppo_ray")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(vocab.SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["copy rev sort add 0123456789 + the prompt"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=vocab.BOS, eos_token=vocab.EOS,
                                        pad_token=vocab.PAD, unk_token=vocab.UNK,
                                        extra_special_tokens=[vocab.SYSTEM, vocab.USER, vocab.ASSISTANT])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "policy")
    seeds = root / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in make_seeds(NUM_SEEDS, seed=3)))
    return SimpleNamespace(root=root, policy=str(root / "policy"), seeds=str(seeds))


def base_argv(run_files, *extra: str) -> list[str]:
    return [
        "--actor.model_name_or_path", run_files.policy,
        "--data.prompt_dataset", run_files.seeds, "--data.input_key", "prompt", "--data.label_key", "label",
        "--data.apply_chat_template", "--data.max_len", "64", "--rollout.max_new_tokens", "16",
        "--reward.remote_url", REWARD_FUNC, "--algo.advantage.estimator", "rloo",
        "--rollout.n_samples_per_prompt", str(N), "--rollout.batch_size", str(BATCH),
        "--rollout.micro_batch_size", "4", "--train.batch_size", "16", "--train.micro_batch_size", "4",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1", "--vllm.num_engines", "2",
        "--ckpt.output_dir", str(run_files.root / "out"), "--logger.tensorboard_dir", str(run_files.root / "tb"),
        "--eva.buffer_size", str(CAPACITY), "--eva.total_prompts", str(BUDGET),
        "--eva.evolver", "task", "--eva.evolver_path", EVOLVE_FUNC,
        *extra,
    ]


class StopBeforeLaunch(Exception):
    pass


def upstream_train_args(fakes, argv):
    """Run `main(argv)` through upstream's parser and checks into `train()`, stopping at its first step
    (`get_strategy`, train_ppo_ray.py:35). Returns (args, the trainer class `train()` would build):
    its `trainer_cls` argument where upstream has that seam (patches/0005), else the PPOTrainer it
    imports when it runs (train_ppo_ray.py:148)."""
    seen = {}

    def get_strategy(args):
        seen["args"] = args
        seen["trainer"] = seen.get("trainer_cls") or sys.modules["openrlhf.trainer.ppo_trainer"].PPOTrainer
        raise StopBeforeLaunch

    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch("openrlhf.utils.get_strategy", get_strategy))
        cli = seams.cli_with_build_parser("openrlhf.cli.train_ppo_ray")
        if cli is not None:  # patches/0003: train() runs from the imported module, with its own names
            upstream_train = cli.train

            def train(args, **kwargs):
                seen["trainer_cls"] = kwargs.get("trainer_cls")
                return upstream_train(args, **kwargs)

            patches.enter_context(mock.patch.object(cli, "get_strategy", get_strategy))
            patches.enter_context(mock.patch.object(cli, "train", train))
        with pytest.raises(StopBeforeLaunch):
            fakes.eva_ppo.main(argv)
    return seen["args"], seen["trainer"]


def solver_policy(text: str, sampling_params, request_number: int) -> str:
    """FakeAsyncLLMEngine's answers to task prompts: right half the time, one digit short otherwise."""
    prompt = text.split(vocab.USER)[-1].split(vocab.ASSISTANT)[0]
    answer = solve(prompt)
    if random.Random(f"{prompt}/{request_number}").random() < 0.5:
        answer = answer[:-1]
    return answer + vocab.EOS


def test_upstream_ray_path_imports_with_fake_vllm(fakes):
    # The CLI module itself is executed (not imported) by every main() below, as runpy runs it.
    from openrlhf.trainer.ppo_utils import samples_generator
    from openrlhf.trainer.ray import vllm_engine

    assert samples_generator.SamplingParams is fakes.vllm.FakeSamplingParams
    assert vllm_engine.vllm.AsyncLLMEngine is fakes.vllm.FakeAsyncLLMEngine
    eva_class = fakes.eva_ppo.EvaPPOTrainer.__ray_actor_class__
    assert issubclass(eva_class, fakes.upstream_trainer.__ray_actor_class__)


def test_official_ppo_seams_come_with_the_series(fakes):
    # OpenRLHF as released has none of them; with patches/ applied (tests/test_patches.py) every one.
    patched = seams.flash_attn_optional()
    cli = seams.cli_with_build_parser("openrlhf.cli.train_ppo_ray")
    assert (cli is not None) is patched
    assert seams.ppo_trainer_cls(cli) is patched
    assert seams.ppo_prompt_source(fakes.eva_ppo.EvaPPOTrainer.__ray_actor_class__) is patched


def test_help_lists_every_upstream_flag_and_the_eva_flags(fakes, capsys):
    from openrlhf_eva.upstream import run_upstream_cli

    parsers = []
    with pytest.raises(SystemExit) as plain:
        run_upstream_cli("openrlhf.cli.train_ppo_ray", ["--help"], add_flags=parsers.append)
    upstream_flags = {flag for action in parsers[0]._actions for flag in action.option_strings if flag != "-h"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as ours:
        fakes.eva_ppo.main(["--help"])
    help_flags = set(re.findall(r"(?<![\w-])--[\w.]+", capsys.readouterr().out))

    assert plain.value.code == ours.value.code == 0
    assert len(upstream_flags) > 150 and upstream_flags <= help_flags
    assert {flag for flag in help_flags if flag.startswith("--eva.")} == EVA_FLAGS
    assert not EVA_FLAGS & upstream_flags


def test_train_builds_the_eva_trainer_only_with_eva_enable(fakes, run_files):
    import openrlhf.trainer.ppo_trainer as ppo_trainer

    args, trainer = upstream_train_args(fakes, base_argv(run_files, "--eva.enable"))
    assert trainer is fakes.eva_ppo.EvaPPOTrainer
    assert args.eva.enable and args.eva.metric == "A_avg" and args.eva.ratio_evol == 0.5
    assert args.algo.advantage.estimator == "rloo" and args.critic.model_name_or_path is None  # upstream's checks ran
    assert ppo_trainer.PPOTrainer is fakes.upstream_trainer  # put back after the run

    _, trainer = upstream_train_args(fakes, base_argv(run_files))
    assert trainer is fakes.upstream_trainer

    # The trainer actor loads the evolver file in its own process: the driver hands it an absolute path.
    args, _ = upstream_train_args(fakes, base_argv(run_files, "--eva.enable", "--eva.evolver_path",
                                                   os.path.relpath(EVOLVE_FUNC)))
    assert args.eva.evolver_path == EVOLVE_FUNC


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train.async_enable"], "synchronous trainer only"),
        (["--train.num_episodes", "2"], "--train.num_episodes at 1"),
        (["--algo.dynamic_filtering_enable"], "replaces --algo.dynamic_filtering_enable"),
        (["--rollout.vllm_generate_batch_size", "16"], "leave --rollout.vllm_generate_batch_size unset"),
        (["--rollout.n_samples_per_prompt", "1"], "n_samples_per_prompt >= 2"),
        (["--eva.metric", "no_such_metric"], "unknown metric 'no_such_metric'"),
        (["--eva.ratio_evol", "1.5"], "ratio_evol must be in [0, 1]"),
        (["--eva.evolver", "task", "--eva.evolver_path", ""], "needs --eva.evolver_path"),
        (["--eva.evolver", "evol_instruct", "--vllm.num_engines", "0"], "set --vllm.num_engines"),
        (["--eva.evolver", "self_instruct", "--vllm.num_engines", "0"], "self_instruct rewrites with the vLLM"),
        (["--eva.evolve_feedback"], "evolver 'task' does not take --eva.evolve_feedback"),
        (["--eva.sample_mode", "no_such_sampler"], "unknown sampler 'no_such_sampler'"),
        (["--eva.evolver_url", "http://127.0.0.1:8000/v1"], "needs --eva.evolver_model"),
        (["--eva.evolver_model", "some/checkpoint"], "names a model served at --eva.evolver_url"),
        (["--eva.evolver", "task", "--eva.evolver_path", EVOLVE_FUNC, "--eva.evolve_parents", "2"],
         "does not take --eva.evolve_parents"),
        (["--eva.evolver_options", "{not json"], "invalid JSON object value"),
        (["--eva.eval_prompts", "/nonexistent/eval.jsonl"], "/nonexistent/eval.jsonl"),
    ],
)
def test_eva_flags_are_checked_before_ray_starts(fakes, run_files, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        fakes.eva_ppo.main(base_argv(run_files, "--eva.enable", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gpu_example_passes_upstream_and_eva_checks(fakes):
    argv = subprocess.run(["bash", str(EXAMPLE)], env={**os.environ, "DRY_RUN": "1"}, check=True,
                          capture_output=True, text=True).stdout.splitlines()
    args, trainer = upstream_train_args(fakes, argv)
    assert trainer is fakes.eva_ppo.EvaPPOTrainer
    assert args.algo.advantage.estimator == "rloo" and args.rollout.n_samples_per_prompt == 6
    assert (args.eva.metric, args.eva.buffer_size, args.eva.n_new, args.eva.ratio_evol) == ("A_avg", 3200, 4, 0.5)
    assert args.vllm.enable_sleep  # kept by upstream because --train.colocate_all is set
    # train() asserts this for colocated engines after the point where upstream_train_args stops.
    actor_gpus = args.actor.num_nodes * args.actor.num_gpus_per_node
    assert actor_gpus == args.vllm.num_engines * args.vllm.tensor_parallel_size


@pytest.mark.parametrize("value, text", [
    ("add 12+345", "add 12+345"),
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sort 321"}], "sort 321"),
])
def test_user_text_is_what_the_evolver_rewrites(fakes, value, text):
    assert fakes.eva_ppo.user_text(value) == text


@pytest.fixture(scope="module")
def eva_args(fakes, run_files):
    args, _ = upstream_train_args(fakes, base_argv(run_files, "--eva.enable"))
    return args


def seed_rows(run_files) -> list[dict]:
    return [json.loads(line) for line in Path(run_files.seeds).read_text().splitlines()]


class RecordingEvolver(TaskEvolver):
    """The embedded task evolver, keeping the parents it was given."""

    def __init__(self, path):
        super().__init__(path)
        self.parents = []

    def evolve(self, parents, n, rng):
        self.parents.append(list(parents))
        return super().evolve(parents, n, rng)


def prompt_loader(fakes, eva, rows):
    """EvaPromptLoader over seeds shaped as EvaPPOTrainer builds them from upstream's PromptDataset.
    Seeds are templated "[...]" (upstream's PromptDataset), evolved prompts "<...>" (format_prompt)."""
    from openrlhf_eva.creator.online import OnlinePromptSource

    seeds = [{"prompt": row["prompt"], "label": row["label"],
              "metadata": {"datasource": "default", "upstream_prompt": f"[{row['prompt']}]", "image": None}}
             for row in rows]
    source = OnlinePromptSource(seeds, BATCH, RecordingEvolver(EVOLVE_FUNC), total_prompts=eva.total_prompts,
                                capacity=eva.buffer_size, top_frac=eva.top_frac, n_new=eva.n_new,
                                n_new_bootstrap=eva.n_new_bootstrap, ratio_evol=eva.ratio_evol, metric=eva.metric,
                                filters=eva.filters, seed=0)
    return fakes.eva_ppo.EvaPromptLoader(source, lambda text: f"<{text}>", N)


def draw_batch(loader):
    return [next(loader) for _ in range(BATCH)]


def test_prompt_loader_serves_the_phase_plan_and_returns_rewards_in_batch_order(fakes, eva_args, run_files):
    loader = prompt_loader(fakes, eva_args.eva, seed_rows(run_files))
    assert len(loader) == BUDGET
    rng = random.Random(0)
    from_buffer, phases = [], []
    for step in range(1, BUDGET // BATCH + 1):
        batch = draw_batch(loader)
        assert all(len(part) == 1 for item in batch for part in item)  # (datasources, prompts, labels, images)
        prompts = [item[1][0] for item in batch]
        from_buffer.append(sum(prompt.startswith("<") for prompt in prompts))
        rewards = {prompt: [rng.random() for _ in range(N)] for prompt in prompts}
        responses = {prompt: [f"{prompt} answer {k}" for k in range(N)] for prompt in prompts}
        arrival = [(prompt, rewards[prompt], responses[prompt]) for prompt in prompts]
        rng.shuffle(arrival)  # groups come back in completion order, not batch order
        metrics = loader.observe(arrival, step)
        phases.append(metrics["eva/phase_index"])
        assert metrics["eva/batch_from_buffer"] == from_buffer[-1]
        assert all(isinstance(value, float) for value in metrics.values())  # scalars for upstream's loggers
        for parent in loader.source.evolver.parents[-1]:  # the evolver saw each prompt with its own rollouts
            templated = f"[{parent.prompt}]" if parent.id is None else f"<{parent.prompt}>"
            assert parent.rewards == pytest.approx(rewards[templated])
            assert parent.responses == responses[templated]
    assert_follows_phase_plan(phases, from_buffer)
    with pytest.raises(StopIteration):
        next(loader)


def test_prompt_loader_resumes_from_its_state_dict(fakes, eva_args, run_files):
    def run_step(loader, step):
        prompts = [item[1][0] for item in draw_batch(loader)]
        rng = random.Random(step)
        loader.observe([(prompt, [rng.random() for _ in range(N)], None) for prompt in prompts], step)

    original = prompt_loader(fakes, eva_args.eva, seed_rows(run_files))
    for step in (1, 2):
        run_step(original, step)
    resumed = prompt_loader(fakes, eva_args.eva, seed_rows(run_files))
    resumed.load_state_dict(pickle.loads(pickle.dumps(original.state_dict())))  # as a checkpoint stores it
    for loader in (original, resumed):
        run_step(loader, 3)
    assert [entry.text for entry in resumed.source.buffer] == [entry.text for entry in original.source.buffer]
    assert draw_batch(resumed) == draw_batch(original)


def test_prompt_loader_names_a_checkpoint_of_another_run_or_version(fakes, eva_args, run_files):
    loader = prompt_loader(fakes, eva_args.eva, seed_rows(run_files))
    state = loader.state_dict()
    # A run without --eva.enable leaves its StatefulDataLoader's state where eva keeps the source's.
    with pytest.raises(ValueError, match="not saved by eva's prompt source"):
        loader.load_state_dict({"_num_yielded": 8, "_sampler_iter_yielded": 8})
    with pytest.raises(ValueError, match="version 0; this code reads version"):
        loader.load_state_dict({**state, "version": 0})
    other_seeds = prompt_loader(fakes, eva_args.eva, seed_rows(run_files)[:-1])
    with pytest.raises(ValueError, match="seeds_fingerprint: saved"):
        other_seeds.load_state_dict(state)


def rollout_samples_in_arrival_order(eva_args, tokenizer, prompts, rewards):
    """Rollout samples as SamplesGenerator builds them from RolloutRayActor responses: each prompt's n
    samples together, prompts in completion order (ray.wait, samples_generator.py:162)."""
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    generator = SamplesGenerator(SimpleNamespace(args=eva_args), None, None, None, [])
    samples = []
    for prompt, group in zip(prompts, rewards):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for k, reward in enumerate(group):
            response_ids = tokenizer("1" * (k + 1) + vocab.EOS, add_special_tokens=False)["input_ids"]
            response = {"prompt": prompt, "label": "", "observation_tokens": prompt_ids + response_ids,
                        "action_ranges": [(len(prompt_ids), len(prompt_ids) + len(response_ids))],
                        "rollout_log_probs": None, "reward": torch.tensor([reward]), "scores": torch.tensor([reward]),
                        "truncated": False, "extra_logs": {}}
            samples.append(generator._process_response_into_experience(response, max_len=64))
    return samples


@pytest.fixture(scope="module")
def strategy_and_tokenizer(fakes, eva_args, run_files):
    from openrlhf.utils import get_strategy, get_tokenizer

    strategy = get_strategy(eva_args)
    return strategy, get_tokenizer(run_files.policy, None, "left", strategy)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_prompts=st.integers(1, 6), n=st.integers(2, 5), micro_batch=st.integers(1, 7),
       dynamic_batch=st.booleans(), seed=st.integers(0, 2**16))
def test_rewards_are_grouped_per_prompt_from_real_experiences(fakes, eva_args, strategy_and_tokenizer, num_prompts,
                                                              n, micro_batch, dynamic_batch, seed):
    """Real SamplesGenerator samples through RemoteExperienceMaker's micro-batching (and seqlen
    balancing, which reorders samples): every prompt gets back exactly its own n rewards and, decoded
    from the padded Experiences, its own n responses."""
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    strategy, tokenizer = strategy_and_tokenizer
    rng = random.Random(seed)
    prompts = [f"<|user|>copy {rng.randrange(10**6)}<|assistant|>" for _ in range(num_prompts)]
    rewards = [[round(rng.uniform(-1, 1), 4) for _ in range(n)] for _ in prompts]
    samples = rollout_samples_in_arrival_order(eva_args, tokenizer, prompts, rewards)
    maker = RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), strategy, tokenizer)
    args = eva_args
    saved = args.train.dynamic_batch_enable, args.rollout.max_tokens_per_gpu, args.rollout.micro_batch_size
    args.train.dynamic_batch_enable, args.rollout.max_tokens_per_gpu = dynamic_batch, 40
    args.rollout.micro_batch_size = micro_batch  # micro-batches straddle prompt groups
    try:
        experiences = maker.split_rollout_samples(samples)
    finally:
        args.train.dynamic_batch_enable, args.rollout.max_tokens_per_gpu, args.rollout.micro_batch_size = saved

    groups = fakes.eva_ppo.prompt_rollouts(experiences, n, tokenizer)
    assert [prompt for prompt, _, _ in groups] == prompts
    for (_, got, responses), expected in zip(groups, rewards):
        assert got == pytest.approx(expected)
        assert responses == ["1" * (k + 1) for k in range(n)]  # what rollout_samples_in_arrival_order answered
    assert all(responses is None for _, _, responses in fakes.eva_ppo.prompt_rollouts(experiences, n))


def fake_policy_actor_class(fakes):
    from openrlhf.trainer.ray.launcher import BaseModelActor

    class FakePolicyModelActor(BaseModelActor):
        """PolicyModelActor (trainer/ray/ppo_actor.py) without a model: log-probs of zeros, a fit that
        reports a loss, and a record of the calls the trainer makes."""

        def __init__(self, world_size, rank, master_addr, master_port):
            self.calls, self.max_steps = [], None

        def init_model_from_pretrained(self, strategy, pretrain, max_steps=None, vllm_engines=None):
            self.strategy, self.max_steps = strategy, max_steps

        def forward(self, sequences, action_mask=None, attention_mask=None, **kwargs):
            return torch.zeros(action_mask.shape, dtype=torch.float32)

        def append(self, experience):
            self.calls.append("append")

        def fit(self, kl_ctl=0):
            self.calls.append("fit")
            return {"policy_loss": 0.5}

        def broadcast_to_vllm(self):
            self.calls.append("broadcast_to_vllm")

    return fakes.ray.FakeActorClass(FakePolicyModelActor)


def fake_vllm_engines(fakes, args, count):
    """RolloutRayActors over FakeAsyncLLMEngine, built with create_vllm_engines' kwargs (vllm_engine.py:264)."""
    from openrlhf.trainer.ray.vllm_engine import RolloutRayActor

    engines = []
    for i in range(count):
        engines.append(fakes.ray.FakeActorClass(RolloutRayActor.__ray_actor_class__).remote(
            model=args.actor.model_name_or_path, enforce_eager=False,
            worker_extension_cls="openrlhf.trainer.ray.vllm_worker_wrap.WorkerWrap", tensor_parallel_size=1,
            seed=args.train.seed + i, distributed_executor_backend="uni", max_model_len=args.data.max_len,
            enable_prefix_caching=False, dtype="bfloat16", trust_remote_code=True, full_determinism=False,
            gpu_memory_utilization=0.95, bundle_indices=None, num_gpus=1, enable_sleep_mode=args.vllm.enable_sleep,
            agent_func_path=None, remote_rm_url=args.reward.remote_url, mm_pad_token_ids=set(),
        ))
    return engines


def tensorboard_scalars(log_root: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = [path for path in log_root.iterdir() if path.is_dir()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def fit_eva_trainer(fakes, args):
    """The sequence `train()` runs (train_ppo_ray.py:151-188) with EvaPPOTrainer, over fake vLLM
    engines and a fake policy actor; returns (strategy, max_steps, the policy actor group)."""
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from openrlhf.utils import get_strategy

    strategy = get_strategy(args)
    engines = fake_vllm_engines(fakes, args, args.vllm.num_engines)
    actor_group = RayActorGroup(1, 1, fake_policy_actor_class(fakes), pg=None, num_gpus_per_actor=1)
    trainer = fakes.ray.FakeActorClass(fakes.eva_ppo.EvaPPOTrainer.__ray_actor_class__).remote(
        args.actor.model_name_or_path, strategy, actor_group, None, None, None, engines,
        do_sample=True, max_len=args.data.max_len, max_new_tokens=args.rollout.max_new_tokens,
        temperature=args.rollout.temperature, top_p=args.rollout.top_p,
    )
    max_steps = ray.get(trainer.get_max_steps.remote())
    ray.get(actor_group.async_init_model_from_pretrained(strategy, args.actor.model_name_or_path, max_steps, engines))
    ray.get(trainer.fit.remote())
    return strategy, max_steps, actor_group


def test_fit_runs_upstream_loop_on_eva_prompts(fakes, eva_args, run_files, monkeypatch):
    """PPOTrainer.fit end to end with EvaPPOTrainer."""
    from openrlhf.trainer.ppo_trainer import prepare_datasets
    from openrlhf.utils import get_tokenizer

    args = eva_args
    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "respond", staticmethod(solver_policy))
    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "calls", [])
    strategy, max_steps, actor_group = fit_eva_trainer(fakes, args)

    # max_steps from the budget (48 prompts x 4 samples / 16 per optimizer step), not the 24 seeds.
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", strategy)
    assert max_steps == BUDGET * N // 16 == 2 * prepare_datasets(strategy, tokenizer)[2]
    policy = actor_group._actor_handlers[0].instance
    assert policy.max_steps == max_steps
    assert policy.calls.count("fit") == BUDGET // BATCH and policy.calls.count("broadcast_to_vllm") == BUDGET // BATCH

    # Upstream's tensorboard logger carries eva's metrics, one point per step.
    scalars = tensorboard_scalars(run_files.root / "tb")
    from_buffer = scalars["train/eva/batch_from_buffer"]
    assert_follows_phase_plan(scalars["train/eva/phase_index"], from_buffer)
    assert max(scalars["train/eva/batch_info_mean"]) > 0 and len(scalars["train/timing/eva_evolve"]) == BUDGET // BATCH

    # The engines rolled out n samples of every seed once and of every buffer prompt served, all
    # templated alike; the buffer was written with verifiable children.
    seeds = {row["prompt"] for row in seed_rows(run_files)}
    generated = [text for method, text in fakes.vllm.FakeAsyncLLMEngine.calls if method == "generate"]
    assert all(text.startswith(vocab.USER) and text.endswith(vocab.ASSISTANT) for text in generated)
    rolled_out = [text[len(vocab.USER) : -len(vocab.ASSISTANT)] for text in generated]
    seed_rollouts = Counter(text for text in rolled_out if text in seeds)
    assert set(seed_rollouts) == set(seeds) and min(seed_rollouts.values()) >= N  # one pass, then replays
    assert sum(seed_rollouts.values()) == (BUDGET - sum(from_buffer)) * N
    assert sum(text not in seeds for text in rolled_out) == sum(from_buffer) * N
    buffer_rows = [json.loads(line) for line in (run_files.root / "out" / "eva_buffer.jsonl").read_text().splitlines()]
    assert buffer_rows and all(row["depth"] >= 1 and row["label"] == solve(row["text"]) for row in buffer_rows)


def test_fit_shows_the_creator_each_parents_best_and_weakest_response(fakes, run_files, monkeypatch, tmp_path):
    """--eva.evolve_feedback in the Ray path: the responses the engines gave reach evol_instruct's
    meta-prompts, decoded from the batch's Experiences."""
    args, _ = upstream_train_args(fakes, base_argv(
        run_files, "--eva.enable", "--eva.evolver", "evol_instruct", "--eva.evolve_feedback", "--data.max_len",
        "4096", "--vllm.num_engines", "1", "--eva.total_prompts", "16", "--ckpt.output_dir", str(tmp_path / "out"),
        "--logger.tensorboard_dir", str(tmp_path / "tb"), "--eva.frontier_quantile", "0"))  # every top-half parent

    def policy_and_creator(text, sampling_params, request_number):
        if "<<<" in text:  # a meta-prompt: the frames quote the parent between <<< and >>>
            return f"Rewritten prompt: copy {request_number}"
        return solver_policy(text, sampling_params, request_number)

    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "respond", staticmethod(policy_and_creator))
    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "calls", [])
    fit_eva_trainer(fakes, args)

    sent = [text for method, text in fakes.vllm.FakeAsyncLLMEngine.calls if method == "generate"]
    meta_prompts = [text for text in sent if "<<<" in text]
    assert len(meta_prompts) == 2 * (BATCH // 2) * args.eva.n_new  # 2 steps, the top half of each batch evolved
    for text in meta_prompts:
        parent = text.split("<<<\n")[1].split("\n>>>")[0]
        best = text.split("Its best answer")[1].split("<<<\n")[1].split("\n>>>")[0]
        weakest = text.split("Its weakest answer")[1].split("<<<\n")[1].split("\n>>>")[0]
        # solver_policy's two answers to the parent: the right one, or one digit short
        assert {best, weakest} <= {solve(parent), solve(parent)[:-1]}


def test_evol_instruct_rewrites_through_sleeping_vllm_engines(fakes, run_files, monkeypatch):
    """The evol_instruct evolver of the trainer: meta-prompts templated like training prompts, sent to
    RolloutRayActor.generate (FakeAsyncLLMEngine), engines woken before and put back to sleep after."""
    from openrlhf.trainer.ray.vllm_engine import batch_vllm_engine_call
    from openrlhf.utils import get_tokenizer

    from openrlhf_eva.creator import Parent

    args, _ = upstream_train_args(fakes, base_argv(
        run_files, "--eva.enable", "--eva.evolver", "evol_instruct", "--data.max_len", "4096",
        "--train.colocate_all", "--vllm.enable_sleep", "--vllm.num_engines", "1"))
    assert args.vllm.enable_sleep  # upstream keeps sleep mode only with --train.colocate_all

    def rewriter(text, sampling_params, request_number):
        original = text.split("<<<\n")[1].split("\n>>>")[0]
        return f"Rewritten prompt: {original} but in base {request_number + 2}"

    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "respond", staticmethod(rewriter))
    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "calls", [])
    engines = fake_vllm_engines(fakes, args, 1)
    batch_vllm_engine_call(engines, "sleep")  # create_vllm_engines leaves them asleep (vllm_engine.py:308)
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", None)
    evolver = fakes.eva_ppo.build_online_evolver(args, engines, tokenizer)

    parents = [Parent(id=None, prompt="copy 4721"), Parent(id=7, prompt="sort 90210", depth=1)]
    children = evolver.evolve(parents, 2, random.Random(0))

    assert [child.prompt for child in children] == [
        "copy 4721 but in base 2", "copy 4721 but in base 3", "sort 90210 but in base 4", "sort 90210 but in base 5"]
    assert [(c.parent_index, c.parent_id, c.depth) for c in children] == [(0, None, 1)] * 2 + [(1, 7, 2)] * 2
    calls = fakes.vllm.FakeAsyncLLMEngine.calls
    methods = [method for method, _ in calls]
    assert methods == ["sleep", "wake_up", "wake_up", "generate", "generate", "generate", "generate", "sleep"]
    meta_prompts = [text for method, text in calls if method == "generate"]
    assert all(text.startswith(vocab.USER) and text.endswith(vocab.ASSISTANT) for text in meta_prompts)


def test_any_llm_evolver_runs_on_the_vllm_engines_with_its_options(fakes, run_files, monkeypatch):
    """tree_bon over evol_complexity, options from --eva.evolver_options, writes through the engines."""
    from openrlhf.utils import get_tokenizer

    from openrlhf_eva.creator import Parent

    args, _ = upstream_train_args(fakes, base_argv(
        run_files, "--eva.enable", "--eva.evolver", "tree_bon", "--data.max_len", "4096", "--vllm.num_engines", "1",
        "--eva.evolver_options", '{"base": "evol_complexity", "width": 2, "scorer": "length"}',
        "--eva.evolve_parents", "2"))

    def rewriter(text, sampling_params, request_number):
        return "Rewritten prompt: " + "longer " * (request_number % 2 + 1) + "prompt"

    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "respond", staticmethod(rewriter))
    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "calls", [])
    engines = fake_vllm_engines(fakes, args, 1)
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", None)
    evolver = fakes.eva_ppo.build_online_evolver(args, engines, tokenizer)
    assert type(evolver).__name__ == "TreeBestOfNEvolver" and evolver.width == 2
    assert evolver.base.parents_per_call == 2

    children = evolver.evolve([Parent(id=None, prompt="copy 4721"), Parent(id=3, prompt="rev 12")], 1,
                              random.Random(0))
    assert [child.prompt for child in children] == ["longer longer prompt"] * 2
    sent = [text for method, text in fakes.vllm.FakeAsyncLLMEngine.calls if method == "generate"]
    assert len(sent) == 4 and all("copy 4721" in text and "rev 12" in text for text in sent)


def test_a_creator_served_at_evolver_url_writes_instead_of_the_engines(fakes, run_files, monkeypatch):
    from openrlhf_eva.creator import Parent

    scripted_server = load_by_path("scripted_server", HERE / "scripted_server.py")
    monkeypatch.setattr(fakes.vllm.FakeAsyncLLMEngine, "calls", [])
    reply = scripted_server.chat_reply("Rewritten prompt: sort 4721 twice")
    with scripted_server.ScriptedServer(lambda body, number: (200, reply, 0.0)) as server:
        # No vLLM engines at all: the served creator is enough for an LLM evolver.
        args, _ = upstream_train_args(fakes, base_argv(
            run_files, "--eva.enable", "--eva.evolver", "evol_complexity", "--eva.evolver_url", server.url,
            "--eva.evolver_model", "served-creator", "--eva.evolve_max_new_tokens", "32", "--vllm.num_engines", "0"))
        evolver = fakes.eva_ppo.build_online_evolver(args, [], None)
        children = evolver.evolve([Parent(id=None, prompt="copy 4721")], 2, random.Random(0))
    assert [child.prompt for child in children] == ["sort 4721 twice"] * 2
    assert [(body["model"], body["max_tokens"]) for _, _, body in server.requests] == [("served-creator", 32)] * 2
    assert "copy 4721" in server.requests[0][2]["messages"][-1]["content"]
    assert fakes.vllm.FakeAsyncLLMEngine.calls == []


def test_a_served_creators_call_count_resumes_with_the_prompt_loader(fakes, eva_args, run_files):
    """The served creator seeds call k with seed + 100003 k: a resumed run must go on counting, or its
    next children would repeat the first ones' seeds."""
    from openrlhf_eva.creator.online import OnlinePromptSource

    scripted_server = load_by_path("scripted_server", HERE / "scripted_server.py")
    reply = scripted_server.chat_reply("Rewritten prompt: sort 4721 twice")
    with scripted_server.ScriptedServer(lambda body, number: (200, reply, 0.0)) as server:
        args, _ = upstream_train_args(fakes, base_argv(
            run_files, "--eva.enable", "--eva.evolver", "evol_complexity", "--eva.evolver_url", server.url,
            "--eva.evolver_model", "served-creator", "--eva.evolve_max_new_tokens", "32", "--vllm.num_engines", "0"))

        def loader():
            seeds = [{"prompt": row["prompt"], "label": row["label"],
                      "metadata": {"datasource": "default", "upstream_prompt": row["prompt"], "image": None}}
                     for row in seed_rows(run_files)]
            source = OnlinePromptSource(seeds, BATCH, fakes.eva_ppo.build_online_evolver(args, [], None),
                                        total_prompts=4 * BATCH, filters=("empty",), seed=0)
            return fakes.eva_ppo.EvaPromptLoader(source, lambda text: text, N)

        def run_step(prompt_loader, step):
            prompts = [item[1][0] for item in draw_batch(prompt_loader)]
            rng = random.Random(step)
            return prompt_loader.observe([(p, [rng.random() for _ in range(N)], None) for p in prompts], step)

        original = loader()
        run_step(original, 1)
        first_seeds = {body["seed"] for _, _, body in server.requests}
        state = pickle.loads(pickle.dumps(original.state_dict()))  # as a checkpoint stores it
        assert state["creator_stats"]["calls"] > 0
        resumed = loader()
        resumed.load_state_dict(state)
        assert resumed.source.evolver.generate.stats == original.source.evolver.generate.stats
        sent = len(server.requests)
        run_step(original, 2)
        from_original = [body["seed"] for _, _, body in server.requests[sent:]]
        sent = len(server.requests)
        run_step(resumed, 2)
        from_resumed = [body["seed"] for _, _, body in server.requests[sent:]]
    # requests go out concurrently, so they arrive in any order; their seeds are what must agree
    assert from_original and sorted(from_resumed) == sorted(from_original)
    assert first_seeds.isdisjoint(from_original)
