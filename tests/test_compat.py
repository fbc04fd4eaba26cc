"""openrlhf_eva.compat: OpenRLHF's DPO stack imports and a 2-rank gloo DeepSpeed strategy runs on CPU.

With OpenRLHF 0.11.2 as released that takes the flash_attn stand-in and the CUDA guards; with the
upstream patches (patches/0001, 0002) it takes neither, and compat must install neither.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import openrlhf_eva
from openrlhf_eva import compat
from openrlhf_eva.compat import flash_attn_standin, seams

PATCHED = seams.flash_attn_optional()  # patches/0001 and 0002 go together in this suite
# Our stand-in, once registered, is what find_spec("flash_attn") finds.
STANDIN = getattr(sys.modules.get("flash_attn"), flash_attn_standin.STANDIN_ATTR, False)
NO_FLASH_ATTN = STANDIN or importlib.util.find_spec("flash_attn") is None


def test_each_replacement_only_where_installed_openrlhf_needs_it():
    assert seams.device_agnostic_strategy() is PATCHED
    assert openrlhf_eva.compat.status() == {
        "flash_attn_standin": not PATCHED and NO_FLASH_ATTN,
        "cuda_guards": not PATCHED and not torch.cuda.is_available(),
    }


def test_official_seams_come_with_the_series():
    # OpenRLHF as released has none of them; with patches/ applied (tests/test_patches.py) every one.
    train_dpo = seams.cli_with_build_parser("openrlhf.cli.train_dpo")
    found = {
        "0003 build_parser": train_dpo is not None,
        "0006 loss_type": train_dpo is not None and seams.dpo_reference_free(train_dpo.build_parser()),
    }
    assert found == dict.fromkeys(found, PATCHED)


@pytest.mark.skipif(not PATCHED or not NO_FLASH_ATTN, reason="needs patched OpenRLHF and no flash_attn")
def test_patched_openrlhf_imports_without_standin_or_guards():
    import openrlhf.models  # noqa: F401

    assert "flash_attn" not in sys.modules
    assert torch.cuda.set_device.__module__ == "torch.cuda"


@pytest.mark.skipif(PATCHED or not NO_FLASH_ATTN, reason="the stand-in is registered only for a missing flash_attn")
def test_standin_registered_only_because_flash_attn_is_missing():
    status = openrlhf_eva.compat.status()
    assert status["flash_attn_standin"] is True
    import flash_attn

    assert getattr(flash_attn, flash_attn_standin.STANDIN_ATTR)
    # transformers must not believe a real flash-attn is installed.
    import transformers

    assert not transformers.utils.is_flash_attn_2_available()
    # flash_attn.ops stays absent so OpenRLHF falls back to its torch log-prob path.
    with pytest.raises(ImportError):
        from flash_attn.ops.triton.cross_entropy import cross_entropy_loss  # noqa: F401


def test_unpad_pad_round_trip_and_gradients():
    from einops import rearrange

    from openrlhf_eva.compat.flash_attn_standin import index_first_axis, pad_input, unpad_input

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    x = torch.randn(3, 4, 5, requires_grad=True)
    flat, indices, cu_seqlens, max_seqlen, used = unpad_input(x, mask)
    assert flat.shape == (5, 5)
    assert indices.tolist() == [0, 1, 2, 4, 5]
    assert cu_seqlens.tolist() == [0, 3, 5, 5] and cu_seqlens.dtype == torch.int32
    assert max_seqlen == 3 and used.tolist() == [3, 2, 0]
    back = pad_input(flat, indices, 3, 4)
    assert torch.equal(back, x * mask[..., None])
    back.sum().backward()
    assert torch.equal(x.grad, mask[..., None].expand_as(x).float())
    # the exact call pattern of openrlhf/models/ring_attn_utils.py::unpad_and_slice_tensor
    ids = torch.arange(12).view(3, 4)
    rows = index_first_axis(rearrange(ids.unsqueeze(-1), "b s ... -> (b s) ..."), indices)
    assert rows.squeeze(-1).tolist() == [0, 1, 2, 4, 5]


def test_openrlhf_dpo_stack_imports_and_logprobs_fall_back():
    import openrlhf.cli.train_dpo  # noqa: F401
    import openrlhf.trainer.dpo_trainer  # noqa: F401
    from openrlhf.models.ring_attn_utils import unpad_and_slice_tensor
    from openrlhf.models.utils import log_probs_from_logits

    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(log_probs_from_logits(logits.clone(), labels), expected)

    seqs = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (seqs != 0).long()
    packed, position_ids, rolled, pad_len, _ = unpad_and_slice_tensor(seqs, mask, None)
    assert packed.tolist() == [[5, 6, 7, 8, 9]]
    assert position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert pad_len == 0


def test_cuda_guards_leave_a_cuda_machine_alone():
    # A fresh interpreter that claims CUDA: nothing may be replaced.
    code = textwrap.dedent(
        """
        import torch
        torch.cuda.is_available = lambda: True
        original = (torch.cuda.set_device, torch.cuda.synchronize, torch.cuda.current_device)
        from openrlhf_eva.compat import cuda_guards
        assert cuda_guards.install() is False
        assert (torch.cuda.set_device, torch.cuda.synchronize, torch.cuda.current_device) == original
        print("untouched")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "untouched" in out.stdout


RANK_SCRIPT = textwrap.dedent(
    """
    import torch
    import openrlhf_eva  # applies compat
    from openrlhf.utils import get_strategy
    from openrlhf.utils.config import hierarchize
    from argparse import Namespace

    args = hierarchize(Namespace(**{
        "local_rank": -1, "max_norm": 1.0,
        "train.seed": 42, "train.micro_batch_size": 1, "train.batch_size": 2,
        "ds.zero_stage": 2, "ds.param_dtype": "bf16",
    }))
    strategy = get_strategy(args)
    strategy.setup_distributed()
    rank = torch.distributed.get_rank()
    total = strategy.all_reduce(torch.tensor([float(rank + 1)]), op="sum")
    gathered = strategy.all_gather(torch.tensor([rank]))
    strategy.print(f"world={strategy.world_size} accum={strategy.accumulated_gradient}")
    print(f"rank={rank} sum={total.item()} gathered={gathered.tolist()}")
    """
)



@pytest.mark.slow
def test_two_rank_gloo_deepspeed_strategy(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = str(compat.free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    assert "rank=0 sum=3.0 gathered=[0, 1]" in outs[0][0]
    assert "rank=1 sum=3.0 gathered=[0, 1]" in outs[1][0]
    assert "world=2 accum=1" in outs[0][0]
