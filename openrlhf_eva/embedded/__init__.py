"""The embedded CPU default: a verifiable task family small enough for a ~1M-parameter model.

Everything here runs on a laptop CPU with nothing downloaded, and is built so a benchmark can tell
whether eva's creator helps: the seeds cover only part of the family, and the held-out splits
measure how far in depth and in breadth the solver got.

Tasks (tasks.py). Prompts are ``"<kind> <digits>"`` or ``"add <digits>+<digits>"`` (<= 21 chars);
each has one answer. Kinds come in related pairs, seed kind | kind reachable only by evolving:
    copy -> rot (rotate left by 1)   rev -> swap (first <-> last)
    sort -> max (largest digit)      add -> inc (add one)
Difficulty d in 1..8: d+1 digits for string kinds and inc, two d-digit operands for add.
Seeds: SEED_KINDS at difficulties 1-3.

Splits (data.py, fixed by TEST_SEED, 336 rows, each tagged split/kind/difficulty):
    in_dist   seed kinds, difficulties 1-3, unseen instances   (4 kinds x 3 x 10)
    harder    seed kinds, difficulties 4-6                     (4 kinds x 3 x 8)
    new_kind  rot/swap/max/inc at difficulties 1-3             (4 kinds x 3 x 10)
    all       the union
Seeds and SFT data exclude every test prompt; so do evolved children. SFT data adds 10% at
difficulty 4 so the warm-started solver sits just below the frontier.

Reward (reward.py, reward_func.py): 1.0 for an exact answer, else
0.8 * (1 - levenshtein / max(len(pred), len(gold))); reward_func.py is OpenRLHF's
``--reward.remote_url`` file and extracts the response from the decoded query.

Evolver (evolve_func.py): deepen (difficulty +1, sometimes +2, capped at 8), shift_kind (any other
kind of the family, same difficulty), resample (new instance); labels recomputed by ``solve``.

Model (model.py): char-level tokenizer with one id per character and per special token, chat
template ``<|user|>{prompt}<|assistant|>{answer}</s>``, and a 4-layer, 128-wide Llama (0.86M
parameters); ``build_tiny(out_dir)`` writes both.

reward_func.py and evolve_func.py are loaded by file path, so they import only absolute
``openrlhf_eva.embedded`` modules and never ``openrlhf``.
"""
