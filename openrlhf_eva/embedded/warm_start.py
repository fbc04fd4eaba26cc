"""Warm-start the embedded tiny Llama by SFT through OpenRLHF's own SFT trainer, on CPU.

`warm_start(out_dir)` builds the model and tokenizer (`build_tiny`), writes SFT data of the
seed distribution, runs `python -m openrlhf_eva.train_sft` (OpenRLHF's `train_sft` under
compat) in a subprocess, and measures greedy accuracy per held-out split. The result is
cached: a second call with the same settings returns at once, so demos and tests share it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from openrlhf_eva import compat
from openrlhf_eva.creator.data import write_jsonl
from openrlhf_eva.embedded.data import make_sft_data, make_test_set
from openrlhf_eva.embedded.model import build_tiny
from openrlhf_eva.evaluate import evaluate

REWARD_FILE = Path(__file__).with_name("reward_func.py")
DONE_FILE = "warm_start.json"


@dataclass(frozen=True)
class WarmStartConfig:
    seed: int = 42
    sft_samples: int = 6144
    epochs: int = 2
    lr: float = 2e-3
    batch_size: int = 64
    max_len: int = 48


def _fingerprint(config: WarmStartConfig, task: dict | None = None) -> str:
    # The task family's source is part of the key: changing a task must rebuild the model.
    import openrlhf_eva.embedded as embedded

    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    if task is not None:  # another task's data, alphabet and reward
        digest.update(json.dumps(task, sort_keys=True, default=str).encode())
    for name in ("tasks.py", "model.py", "data.py", "vocab.py"):
        digest.update((Path(embedded.__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def _run_with_progress(cmd: list[str], log_path: Path, label: str) -> None:
    """Run `cmd` with its output in `log_path`; show upstream's step counter on one line."""
    step = re.compile(rb"Train step of epoch (\d+):\s+\d+%\|[^|]*\| (\d+)/(\d+)")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=compat.child_process_env())
        shown = None
        while proc.poll() is None:
            time.sleep(1.0)
            found = step.findall(log_path.read_bytes()[-4096:])
            if found and found[-1] != shown:
                shown = found[-1]
                epoch, done, total = (x.decode() for x in shown)
                print(f"\r  {label}: epoch {epoch}, step {done}/{total}   ", end="", flush=True)
    print()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{label} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))


def warm_start(out_dir: str | Path, config: WarmStartConfig = WarmStartConfig(), verbose: bool = True, *,
               sft_rows: list[dict] | None = None, alphabet: str | None = None, eval_rows: list[dict] | None = None,
               reward_file: str | Path | None = None) -> Path:
    """Return the directory of the warm-started model, training it first unless cached.

    The defaults are the embedded digit family. Another task (``openrlhf_eva.bench --task-dir``)
    gives its SFT rows (prompt, response; ``config.sft_samples`` is then ignored), the characters
    its data uses, and its held-out rows and reward file for the greedy check at the end.
    """
    out_dir = Path(out_dir)
    final = out_dir / "sft"
    task = None
    if sft_rows is not None:
        task = {"sft": sft_rows, "alphabet": alphabet, "eval": eval_rows,
                "reward": Path(reward_file).read_text() if reward_file else None}
    fingerprint = _fingerprint(config, task)
    done = out_dir / DONE_FILE
    if done.exists() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        return final

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    init = build_tiny(out_dir / "init", seed=config.seed, **({"alphabet": alphabet} if alphabet else {}))
    data_path = out_dir / "sft.jsonl"
    write_jsonl(data_path, sft_rows if sft_rows is not None else make_sft_data(n=config.sft_samples, seed=config.seed))
    cmd = [
        sys.executable, "-m", "openrlhf_eva.train_sft",
        "--model.model_name_or_path", init,
        "--data.dataset", str(data_path),
        "--data.input_key", "prompt", "--data.output_key", "response", "--data.apply_chat_template",
        "--data.max_len", str(config.max_len),
        "--train.micro_batch_size", str(config.batch_size), "--train.batch_size", str(config.batch_size),
        "--train.max_epochs", str(config.epochs), "--train.seed", str(config.seed),
        "--adam.lr", str(config.lr), "--lr_warmup_ratio", "0.05", "--min_lr_ratio", "0.1",
        "--ds.zero_stage", "0", "--ds.attn_implementation", "sdpa",
        "--ckpt.output_dir", str(final), "--ckpt.path", str(out_dir / "ckpt"),
        "--logger.logging_steps", "10",
    ]
    if verbose:
        print(f"SFT warm start of the embedded tiny Llama -> {final}")
    _run_with_progress(cmd, out_dir / "sft.log", "OpenRLHF train_sft")
    metrics = evaluate(final, eval_rows if eval_rows is not None else make_test_set(), reward_file or REWARD_FILE)
    record = {"fingerprint": fingerprint, "config": asdict(config), "seconds": time.time() - started,
              "held_out_greedy": metrics}
    done.write_text(json.dumps(record, indent=2) + "\n")
    if verbose:
        print(f"  done in {record['seconds']:.0f}s; greedy exact match per split: "
              + ", ".join(f"{k} {v['exact']:.2f}" for k, v in metrics.items()))
    return final
