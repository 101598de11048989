"""Aesthetic predictors: an MLP on L2-normalised CLIP image embeddings.

This is the shape of the LAION aesthetic predictor that DDPO rewards with (CLIP ViT-L/14 embedding ->
768-1024-128-64-16-1). The toy world trains a smaller one on its tiny CLIP. Weights are safetensors with a
``config.json`` beside them; the LAION checkpoint (a pickled state dict) is read with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

#: Hidden widths of the LAION "improved aesthetic predictor" used by DDPO.
LAION_HIDDEN = (1024, 128, 64, 16)


class AestheticMLP(nn.Module):
    """embedding (normalised inside) -> Linear/ReLU... -> score. Dropout-free: this is an inference model."""

    def __init__(self, embed_dim: int, hidden: tuple[int, ...] = LAION_HIDDEN, activation: str = "relu"):
        super().__init__()
        self.config = {"embed_dim": embed_dim, "hidden": list(hidden), "activation": activation}
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}[activation]
        dims = (embed_dim, *hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), act()]
        layers.append(nn.Linear(dims[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return self.layers(embeds).squeeze(-1)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    @classmethod
    def load(cls, path: str | Path) -> "AestheticMLP":
        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"aesthetic predictor at {path} needs config.json and model.safetensors")
        cfg = json.loads(cfg_file.read_text())
        model = cls(cfg["embed_dim"], tuple(cfg["hidden"]), cfg.get("activation", "relu"))
        model.load_state_dict(load_file(str(weights)))
        return model.eval()
