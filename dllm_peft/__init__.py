"""dllm-peft: parameter-efficient fine-tuning of diffusion LLMs, with NaRA as the headline method."""

__version__ = "0.1.0"
