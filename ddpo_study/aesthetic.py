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

from .rundir import MODEL_CONFIG_FILE

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
        (path / MODEL_CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    @classmethod
    def load(cls, path: str | Path) -> "AestheticMLP":
        path = Path(path)
        cfg_file, weights = path / MODEL_CONFIG_FILE, path / "model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"aesthetic predictor at {path} needs {MODEL_CONFIG_FILE} and model.safetensors")
        cfg = json.loads(cfg_file.read_text())
        model = cls(cfg["embed_dim"], tuple(cfg["hidden"]), cfg.get("activation", "relu"))
        model.load_state_dict(load_file(str(weights)))
        return model.eval()


def load_laion_aesthetic(path: str | Path) -> AestheticMLP:
    """The LAION "improved aesthetic predictor" (``sac+logos+ava1-l14-linearMSE.pth``) that DDPO rewards with.

    Its MLP is five Linear layers (768-1024-128-64-16-1) with dropout between the first four and no
    non-linearity; its state dict names them ``layers.{0,2,4,6,7}``. We read the file with
    ``torch.load(weights_only=True)`` (or safetensors) and copy the Linear layers in order into an
    :class:`AestheticMLP` with identity activations, which computes the same function at inference.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LAION aesthetic predictor weights not found at {path}; download sac+logos+ava1-l14-linearMSE.pth "
            "from the improved-aesthetic-predictor repository and pass its path as aesthetic_model"
        )
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    weights = sorted((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[-2]))
    shapes = [tuple(state[k].shape) for k in weights]
    if not shapes or shapes[-1][0] != 1:
        raise ValueError(f"{path} does not look like an aesthetic MLP (Linear weight shapes {shapes})")
    embed_dim, hidden = shapes[0][1], tuple(s[0] for s in shapes[:-1])
    model = AestheticMLP(embed_dim, hidden, activation="identity")
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    if len(linears) != len(weights):
        raise ValueError(f"{path}: expected {len(linears)} Linear layers, found {len(weights)}")
    with torch.no_grad():
        for layer, key in zip(linears, weights):
            layer.weight.copy_(state[key])
            layer.bias.copy_(state[key[: -len("weight")] + "bias"])
    return model.eval()
