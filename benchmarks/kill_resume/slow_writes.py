"""`dllm-peft` with every safetensors write held open for a moment, so that a kill can land inside one.

The kill benchmark (`run.py`) runs training through this wrapper: each tensor file stays at its temporary name for
HOLD seconds after it is written and before it is renamed into place. Only timing changes; what is written does not.
"""

import sys
import time

import safetensors.torch

from dllm_peft.__main__ import run

HOLD = 0.25
_save_file = safetensors.torch.save_file  # `atomic` imports it when it writes, so patch it at the source


def _held_save_file(tensors, path, metadata=None):
    _save_file(tensors, path, metadata=metadata)
    time.sleep(HOLD)  # the file exists only under its temporary name now


safetensors.torch.save_file = _held_save_file
sys.argv[0] = "dllm-peft"
run()
