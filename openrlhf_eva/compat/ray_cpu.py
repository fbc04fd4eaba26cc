"""Run OpenRLHF 0.11.2's Ray PPO path (cli/train_ppo_ray.py) on a machine without CUDA.

A local Ray cluster that declares logical GPUs, real placement groups and real model actors
(DeepSpeed on gloo); only the vLLM engine has to come from elsewhere (a real CPU build, or a test's
stand-in, importable as `vllm` in every worker). What stands in the way, and the answer to each:

- cli/train_ppo_ray.py:21-32 `ray.init()` declares no GPU on a CPU machine, so every placement
  group of `{"GPU": 1, "CPU": 1}` bundles waits forever. `init_ray(flags)` starts Ray first, with
  as many logical GPUs as the run's roles ask for (or joins the cluster at RAY_ADDRESS and checks
  that it declares enough); upstream then skips its own `ray.init()`.
- Ray workers import OpenRLHF without the driver's preparation (the flash_attn stand-in, the CUDA
  guards, `init_device_mesh("cpu")`): `init_ray` names `setup_worker` Ray's
  worker_process_setup_hook, which does it in every worker before any actor class is loaded.
- The guards `install()` adds, each removed by patches/0008-ray-device-agnostic-actors-and-gloo-weight-sync.patch
  (`seams.ray_path_device_agnostic` detects it, and then none is installed):
  - trainer/ppo_utils/replay_buffer.py:40 builds `torch.device(f"cuda:{current_device()}")`;
  - trainer/ray/ppo_actor.py:436 passes `stream=torch.cuda.current_stream()` to the broadcast;
  - utils/distributed_util.py:13-26 (imported by name at trainer/ray/ppo_actor.py:24) builds the
    weight-sync group with vLLM's StatelessProcessGroup + PyNcclCommunicator, NCCL only;
    `GlooWeightSyncGroup` is the same broadcast over gloo on a TCPStore.

`cpu_flag_errors` names what stays GPU-only: CUDA IPC (--train.colocate_all with --vllm.sync_backend
nccl, ppo_actor.py:439-466; `init_ray` switches the sync backend to gloo instead),
--vllm.sync_with_ray (ray.util.collective), EMA (ppo_actor.py:365 averages on "cuda") and
--ds.packing_samples (flash-attn varlen kernels).
"""

from __future__ import annotations

import datetime
import functools
import os

import torch

from . import seams

SETUP_HOOK = f"{__name__}.setup_worker"
_INSTALLED = False


def logical_gpus(flags: dict) -> int:
    """GPUs the run's placement groups ask for, counting colocated roles apart (an upper bound)."""
    roles = ["actor"]
    if flags["algo.kl.init_coef"] > 0:
        roles.append("ref")
    if flags["algo.advantage.estimator"] == "gae":
        roles.append("critic")
    if not flags["reward.remote_url"] and not flags["train.agent_func_path"]:
        roles.append("reward")
    gpus = sum(flags[f"{role}.num_nodes"] * flags[f"{role}.num_gpus_per_node"] for role in roles)
    return gpus + (flags["vllm.num_engines"] or 0) * flags["vllm.tensor_parallel_size"]


def cpu_flag_errors(flags: dict) -> list[str]:
    """The flags whose code paths need CUDA even with the guards below."""
    errors = []
    if flags["vllm.sync_with_ray"]:
        errors.append("--vllm.sync_with_ray syncs weights with ray.util.collective (NCCL/pygloo): drop it on CPU")
    if flags["train.enable_ema"]:
        errors.append("--train.enable_ema averages on 'cuda' (trainer/ray/ppo_actor.py:365): drop it on CPU")
    if flags["ds.packing_samples"]:
        errors.append("--ds.packing_samples needs flash-attn's varlen kernels: drop it on CPU")
    return errors


def init_ray(flags: dict) -> None:
    """Start Ray with logical GPUs and the worker setup hook (or join RAY_ADDRESS) before upstream's `ray.init()`.

    Switches --vllm.sync_backend nccl to gloo: NCCL does not run without CUDA, and with
    --train.colocate_all nccl would mean CUDA IPC handles.
    """
    import ray

    if flags["vllm.sync_backend"] == "nccl":
        print("[openrlhf_eva] no CUDA: --vllm.sync_backend nccl -> gloo (weights reach the vLLM engines over gloo)")
        flags["vllm.sync_backend"] = "gloo"
    if ray.is_initialized():
        return
    gpus = logical_gpus(flags)
    # The variables upstream's own ray.init passes to workers (train_ppo_ray.py:25-31), with its
    # defaults; one intra-op thread per worker unless the user says otherwise, since every logical
    # GPU is a process competing for the same cores.
    env_vars = {
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": os.environ.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(gpus, 1)))),
    }
    runtime_env = {"worker_process_setup_hook": SETUP_HOOK, "env_vars": env_vars}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env)
        declared = ray.cluster_resources().get("GPU", 0)
        if declared < gpus:
            ray.shutdown()
            raise RuntimeError(f"the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} declares {declared:g} "
                               f"GPUs and this run places {gpus}; on a CPU machine declare logical ones "
                               f"(`ray start --head --num-gpus {gpus}`)")
        return
    # address="local": a new cluster of our own, never one that another user started on this host.
    # Logical CPUs: one per bundle ({"GPU": 1, "CPU": 1}) plus the trainer actor and the driver.
    ray.init(address="local", num_gpus=gpus, num_cpus=gpus + 2, include_dashboard=False, runtime_env=runtime_env)


def setup_worker() -> None:
    """Ray's worker_process_setup_hook: what the driver did before importing OpenRLHF, in a worker."""
    import openrlhf_eva  # noqa: F401  compat.install(): the flash_attn stand-in and the CUDA guards

    install()


class GlooWeightSyncGroup:
    """What the weight sync uses of vLLM's PyNcclCommunicator, `broadcast(tensor, src, stream)`, over gloo.

    Rank 0 (DeepSpeed rank 0) hosts the TCPStore at the address and free port upstream picked
    (ppo_actor.py:118-121); the engines' workers join it, retrying until it is up. The group is
    not torch.distributed's default group, which stays DeepSpeed's (or the engine's) own.
    """

    def __init__(self, master_address: str, master_port: int, rank: int, world_size: int,
                 timeout: datetime.timedelta = datetime.timedelta(minutes=30)) -> None:
        store = torch.distributed.TCPStore(master_address, master_port, world_size, is_master=rank == 0,
                                           timeout=timeout)
        self.group = torch.distributed.ProcessGroupGloo(store, rank, world_size, timeout)
        self.rank, self.world_size = rank, world_size

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        # `stream` is CUDA's; gloo copies host memory and returns when every rank has the tensor.
        self.group.broadcast(tensor, src).wait()


def stateless_init_process_group(master_address, master_port, rank, world_size, device) -> GlooWeightSyncGroup:
    """utils/distributed_util.py:13-26 with a gloo group instead of vLLM's NCCL one (same signature)."""
    return GlooWeightSyncGroup(master_address, master_port, rank, world_size)


def current_stream(device=None) -> None:
    """torch.cuda.current_stream on CPU: no stream, which is what `GlooWeightSyncGroup.broadcast` takes."""
    return None


def install() -> bool:
    """Install the Ray-path guards where CUDA is missing and OpenRLHF lacks patches/0008; True if installed.

    Imports OpenRLHF's Ray modules, hence `vllm`: call it after `openrlhf_eva` (compat) is imported.
    """
    global _INSTALLED
    if _INSTALLED:
        return True
    if torch.cuda.is_available() or seams.ray_path_device_agnostic():
        return False
    import openrlhf.trainer.ray.ppo_actor as ppo_actor
    import openrlhf.utils.distributed_util as distributed_util
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    # trainer/ray/ppo_actor.py:436 (and vllm_worker_wrap.py:46, engine side).
    torch.cuda.current_stream = current_stream
    # utils/distributed_util.py:13-26, looked up when called by the engines' side
    # (vllm_worker_wrap.py:7) and bound at import time by trainer/ray/ppo_actor.py:24.
    distributed_util.stateless_init_process_group = stateless_init_process_group
    ppo_actor.stateless_init_process_group = stateless_init_process_group

    # trainer/ppo_utils/replay_buffer.py:40: f"cuda:{torch.cuda.current_device()}" is "cuda:cpu" with
    # the CUDA guards, which torch.device refuses. Build the buffer with an index that parses, then
    # point it at the CPU, where sample() moves experiences.
    original_init = NaiveReplayBuffer.__init__

    @functools.wraps(original_init)
    def replay_buffer_init(self, *args, **kwargs):
        guarded_current_device = torch.cuda.current_device
        torch.cuda.current_device = lambda: 0
        try:
            original_init(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = guarded_current_device
        self.target_device = torch.device("cpu")

    NaiveReplayBuffer.__init__ = replay_buffer_init
    _INSTALLED = True
    return True
