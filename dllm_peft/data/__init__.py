"""Task data, shared by training and evaluation: records read from files, built-in tasks, tokenised batches.

- `records.py`: reading `.jsonl`/`.json`/datasets folders into prompt/response records, the chat template, tokenising
  with the prompt left unmasked, EOS padding and the deterministic example order;
- `tasks.py`: the built-in toy tasks (`builtin:lastdigit`, ...) generated in code, used by the first run and tests.

May import: `models` (tokenizers) and the shared leaves. Imported by `training`, `evaluation` and `cli`; it sits
below both so that evaluation can read the same records as training without a sideways import between them.
"""
