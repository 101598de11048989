"""Model loading by name or path: clear errors, the LAION predictor format, CLIP scorers."""

import json

import pytest
import torch
from torch import nn

from ddpo_study.aesthetic import AestheticMLP, load_laion_aesthetic
from ddpo_study.models import ModelLoadError, load_aesthetic, load_clip, load_pipeline


class LaionMLP(nn.Module):
    """The LAION improved-aesthetic-predictor layout (Linear/Dropout, no activations), built here from scratch."""

    def __init__(self, d=12):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d, 10), nn.Dropout(0.2), nn.Linear(10, 8), nn.Dropout(0.2),
                                    nn.Linear(8, 6), nn.Dropout(0.1), nn.Linear(6, 4), nn.Linear(4, 1))

    def forward(self, x):
        return self.layers(x / x.norm(dim=-1, keepdim=True)).squeeze(-1)


def test_laion_checkpoint_loads_with_weights_only_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    ref = LaionMLP().eval()
    torch.save(ref.state_dict(), tmp_path / "laion.pth")
    ours = load_laion_aesthetic(tmp_path / "laion.pth")
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), ref(x))
    assert isinstance(load_aesthetic(tmp_path / "laion.pth"), AestheticMLP)


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"layers.0.weight": torch.zeros(1, 2), "evil": object()}, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError):
        load_aesthetic(tmp_path / "bad.pth")


def test_missing_or_corrupt_pipeline_dirs_name_the_path(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(str(tmp_path / "nothing"))
    (tmp_path / "half").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_pipeline(str(tmp_path / "half"))
    (tmp_path / "half" / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_pipeline(str(tmp_path / "half"))
    (tmp_path / "half" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ModelLoadError, match="lacks the component"):
        load_pipeline(str(tmp_path / "half"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_clip(tmp_path / "half")


def test_toy_layout_loads_through_the_same_loaders(tiny_model_dir, one_thread):
    pipe = load_pipeline(str(tiny_model_dir))
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    clip = load_clip(tiny_model_dir / "clip")
    emb = clip.image_embeds(torch.rand(2, 3, 16, 16))
    assert emb.shape == (2, 8)
    scorer = load_aesthetic(tiny_model_dir / "aesthetic")
    assert scorer(emb).shape == (2,)
