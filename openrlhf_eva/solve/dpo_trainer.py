"""eva's solver classes for OpenRLHF's offline DPO trainer (swapped in by `openrlhf_eva.train_dpo`).

* `EvaDPOTrainer`: OpenRLHF's `DPOTrainer` with `PreferenceLoss` (dpo, cdpo, ipo, simpo, orpo, sppo)
  in place of `DPOLoss`. It overrides no loop: upstream `fit()` and `evaluate()` run unchanged and
  reach eva only through the methods they already call (`concatenated_forward`, `_get_batch_logps`,
  `self.loss_fn`, `save_logs_and_checkpoints`).
* `PreferenceDataset`: `RewardDataset` that drops pairs whose chosen == rejected and, for SPPO,
  carries each pair's win probabilities to the trainer.
* `SkippedReference`: what upstream `train()` gets instead of a reference `Actor` when the loss is
  reference-free (simpo, orpo), so no second model is loaded, wrapped or run. Not needed where
  upstream has `--model.loss_type` (patches/0006): its `train()` then builds no reference at all.

Everything is configured by the resolved `args.eva` namespace (see `openrlhf_eva.train_dpo`).
"""

from __future__ import annotations

import torch
from openrlhf.datasets import RewardDataset
from openrlhf.trainer.dpo_trainer import DPOTrainer

from openrlhf_eva.solve.losses import PreferenceInputs, PreferenceLoss

# `args.eva` fields that are PreferenceLoss keywords; a None field is one the loss does not use.
LOSS_HPARAMS = ("beta", "gamma", "lam", "label_smoothing", "nll_coef")


class SkippedReference:
    """Stands in for the reference model of a reference-free loss.

    Upstream `train()` builds a reference Actor unconditionally, passes its `.model` to
    `get_tokenizer`, wraps it with `strategy.prepare` and hands it to the trainer, whose `fit()`
    calls `ref_model.eval()`. This object passes each of those steps while holding no weights.
    """

    # get_tokenizer(path, None, ...) reads the model type from the config file instead.
    model = None

    def __bool__(self) -> bool:
        # strategy.prepare -> _ds_init_eval_model returns a falsy model as is: no DeepSpeed engine.
        return False

    def eval(self) -> "SkippedReference":
        return self

    def __call__(self, *args, **kwargs):
        raise RuntimeError("the reference model was skipped because the loss is reference-free; nothing may run it")


class PromptLengths(list):
    """The prompt lengths upstream batches carry, plus SPPO's per-pair win probabilities.

    `DPOTrainer.fit` unpacks every batch into exactly five fields and hands the fifth (prompt
    lengths) to `concatenated_forward`; riding on it gets the win probabilities there without
    changing the batch layout. DataLoader's pin_memory copies list subclasses with their attributes.
    """

    chosen_win_prob: torch.Tensor
    rejected_win_prob: torch.Tensor


class PreferenceDataset(RewardDataset):
    """`RewardDataset(is_dpo=True)` minus chosen == rejected pairs, plus SPPO win probabilities.

    `args.eva.win_prob_key` (set only for sppo) names the two columns holding P(chosen wins) and
    P(rejected wins); they travel in the `extra` column next to the prompt length.
    """

    def __init__(self, dataset, tokenizer, max_length, strategy, input_template=None, is_dpo=False, **kwargs):
        self.win_prob_keys = strategy.args.eva.win_prob_key
        if self.win_prob_keys:
            missing = [key for key in self.win_prob_keys if key not in dataset.column_names]
            if missing:
                raise ValueError(
                    f"--eva.loss sppo needs win-probability column(s) {missing} in the dataset "
                    f"(columns: {dataset.column_names}); name them with --eva.win_prob_key CHOSEN_KEY REJECTED_KEY"
                )
        super().__init__(dataset, tokenizer, max_length, strategy, input_template, is_dpo, **kwargs)

        # OpenRLHF 0.11.2 trains on identical pairs (a zero DPO gradient, a fixed SimPO/IPO/SPPO
        # push); later upstream versions drop them. Compared after templating: the texts trained on.
        total = len(self.chosens)
        keep = [i for i, (chosen, reject) in enumerate(zip(self.chosens, self.rejects)) if chosen != reject]
        self.identical_pairs_dropped = total - len(keep)
        if self.identical_pairs_dropped:
            self.prompts = [self.prompts[i] for i in keep]
            self.chosens = [self.chosens[i] for i in keep]
            self.rejects = [self.rejects[i] for i in keep]
            self.extras = [self.extras[i] for i in keep]
        dropped = self.identical_pairs_dropped
        strategy.print(f"[openrlhf_eva] dropped {dropped} of {total} preference pairs with chosen == rejected")

    def process_data(self, data):
        row = super().process_data(data)
        if self.win_prob_keys:
            win_probs = {}
            for side, key in zip(("chosen", "rejected"), self.win_prob_keys):
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ValueError(f"win probability {key}={value!r}: SPPO needs a number in [0, 1] in every row")
                win_probs[f"{side}_win_prob"] = float(value)
            row["extra"] = {"prompt_len": row["extra"], **win_probs}
        return row

    def collate_fn(self, item_list):
        chosen_ids, chosen_masks, reject_ids, reject_masks, extras = super().collate_fn(item_list)
        if not self.win_prob_keys:
            return chosen_ids, chosen_masks, reject_ids, reject_masks, extras
        prompt_id_lens = PromptLengths(extra["prompt_len"] for extra in extras)
        prompt_id_lens.chosen_win_prob = torch.tensor([extra["chosen_win_prob"] for extra in extras])
        prompt_id_lens.rejected_win_prob = torch.tensor([extra["rejected_win_prob"] for extra in extras])
        return chosen_ids, chosen_masks, reject_ids, reject_masks, prompt_id_lens


class EvaDPOTrainer(DPOTrainer):
    """`DPOTrainer` whose loss is `PreferenceLoss(args.eva.loss, ...)`.

    Upstream `fit()`/`evaluate()` call `self.loss_fn(policy_c, policy_r, ref_c, ref_r)` right after
    the policy and reference forwards. The policy forward also records what that signature cannot
    carry (mean log-probs, win probabilities) in `self.policy_extras`, which `loss_fn` then reads.
    Logged: upstream's keys ("loss" is the whole eva loss, NLL term included) plus `eva_*` metrics.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        eva = self.args.eva
        hparams = {key: getattr(eva, key) for key in LOSS_HPARAMS if getattr(eva, key) is not None}
        self.preference_loss = PreferenceLoss(eva.loss, **hparams)
        self.loss_fn = self.loss_from_policy_forward
        self.policy_extras: dict = {}
        self.eva_metrics: dict = {}
        self.strategy.print(f"[openrlhf_eva] preference loss: {self.preference_loss}")

    def _get_batch_logps(self, per_token_logps, attention_mask, prompt_id_lens):
        logps_sum, logps_mean = super()._get_batch_logps(per_token_logps, attention_mask, prompt_id_lens)
        # concatenated_forward keeps only the sums (and the chosen half's mean as its NLL);
        # SimPO, ORPO and the NLL term need every row's mean.
        self.last_logps_mean = logps_mean
        return logps_sum, logps_mean

    def concatenated_forward(self, model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens):
        if model is self.ref_model and not self.preference_loss.needs_reference:
            return None, None, None, None
        chosen_logps, rejected_logps, aux_loss, nll_loss = super().concatenated_forward(
            model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens
        )
        if model is self.model:
            batch_size = chosen_ids.shape[0]
            self.policy_extras = {
                "policy_chosen_logps_mean": self.last_logps_mean[:batch_size],
                "policy_rejected_logps_mean": self.last_logps_mean[batch_size:],
            }
            if self.preference_loss.needs_win_prob:
                for side in ("chosen", "rejected"):
                    win_prob = getattr(prompt_id_lens, f"{side}_win_prob")
                    self.policy_extras[f"{side}_win_prob"] = win_prob.to(chosen_logps.device, chosen_logps.dtype)
        return chosen_logps, rejected_logps, aux_loss, nll_loss

    def loss_from_policy_forward(
        self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    ):
        """`DPOLoss`'s signature and return, computed by `PreferenceLoss` on the last policy forward."""
        loss, chosen_rewards, rejected_rewards, self.eva_metrics = self.preference_loss(
            PreferenceInputs(
                policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps,
                reference_chosen_logps=reference_chosen_logps,
                reference_rejected_logps=reference_rejected_logps,
                **self.policy_extras,
            )
        )
        return loss, chosen_rewards, rejected_rewards

    def save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        # fit() builds logs_dict inline; this is the first hook that sees it. Every rank gets here
        # at the same steps, so the all_reduce lines up.
        if logs_dict is not None:
            metrics = {f"eva_{name}": value.item() for name, value in self.eva_metrics.items()}
            logs_dict.update(self.strategy.all_reduce(metrics))
        super().save_logs_and_checkpoints(args, global_step, step_bar, logs_dict, client_states)
