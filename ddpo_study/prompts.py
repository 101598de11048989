"""Prompt sets: a small registry of names for the files under ``data/prompts/``, or any text file path.

A prompt file holds one prompt per line; blank lines are skipped. Names: ``toy_30``, ``toy_300``,
``toy_eval`` (the toy world), ``sd_animals_30``, ``sd_animals_400`` (Stable Diffusion).
"""

from __future__ import annotations

from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
PROMPT_SETS = ("toy_30", "toy_300", "toy_eval", "sd_animals_30", "sd_animals_400")


class PromptSetError(ValueError):
    """A prompt set that does not exist or holds no prompts."""


def resolve_prompt_set(name_or_path: str) -> Path:
    if name_or_path in PROMPT_SETS:
        return PROMPT_DIR / f"{name_or_path}.txt"
    return Path(name_or_path)


def load_prompts(name_or_path: str) -> list[str]:
    """The prompts of a registered set or a text file (one per line)."""
    path = resolve_prompt_set(name_or_path)
    if not path.is_file():
        raise PromptSetError(
            f"prompt set {name_or_path!r}: file {path} does not exist (known sets: {', '.join(PROMPT_SETS)})"
        )
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise PromptSetError(f"prompt set {name_or_path!r}: {path} holds no prompts")
    return prompts
