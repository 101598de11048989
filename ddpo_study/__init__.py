"""ddpo-study: DDPO fine-tuning of text-to-image diffusion, and why LoRA on few prompts collapses diversity.

The core is small pure modules (see the README's map): ``sampler`` (DDIM with log-probs), ``ppo``,
``stat_tracking``, ``finetune`` (lora / full / progressive), ``rewards``, ``metrics``, ``train`` (the loop),
``config``; ``toy`` holds the embedded toy world that runs the whole study on a CPU.
"""

__version__ = "0.1.0"
