"""Characters and special tokens of the embedded char-level tokenizer.

Kept free of transformers so the reward file (loaded by path inside OpenRLHF's rollout workers)
can strip the same markers the tokenizer produces without importing a tokenizer.
"""

PAD = "<pad>"
BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"

# Order fixes the ids: <pad>=0, <s>=1, </s>=2, <unk>=3, <|system|>=4, <|user|>=5, <|assistant|>=6.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT)

# Task prompts use digits, lowercase kind names, space and "+"; the full a-z costs a few embedding
# rows and lets any lowercase word through without <unk>.
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz +"
