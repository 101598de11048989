"""The toy world: grammar round-trip, prompt errors, rendering invariants, prompt sets."""

import pytest
import torch

from ddpo_study.prompts import PromptSetError, load_prompts
from ddpo_study.toy import world
from ddpo_study.toy.prompt_sets import make_prompt_sets
from ddpo_study.toy.tokenizer import build_tokenizer


def test_caption_parse_round_trip_over_whole_grammar():
    table = world.all_attribute_combinations()
    assert len(table) == 3 * 2 * 9 * 49  # fg != bg leaves 7 x 7 colour pairs
    captions = world.caption(table)
    assert len(set(captions)) == len(captions)
    back = world.parse_many(captions)
    for f in world.Attributes.FIELDS:
        assert torch.equal(getattr(back, f), getattr(table, f))


def test_caption_matches_the_documented_form():
    attrs = {"shape": 2, "size": 0, "position": 1, "color": 5, "bg": 2}
    assert world.caption(attrs) == "a small orange triangle at the top on a blue background"


@pytest.mark.parametrize("prompt, fragment", [
    ("a photo of a cat", "not in the toy grammar"),
    ("a huge red circle in the center on a blue background", "unknown size 'huge'"),
    ("a small red circle in the middle on a blue background", "unknown position"),
    ("a small red circle in the center on a red background", "equals the background"),
])
def test_parse_rejects_prompts_outside_the_grammar(prompt, fragment):
    with pytest.raises(world.PromptError, match=fragment):
        world.parse(prompt)


def test_render_is_seeded_and_vectorised():
    attrs = world.random_attributes(16, torch.Generator().manual_seed(1))
    a = world.render(attrs, 32, torch.Generator().manual_seed(2))
    b = world.render(attrs, 32, torch.Generator().manual_seed(2))
    c = world.render(attrs, 32, torch.Generator().manual_seed(3))
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_render_draws_the_right_colours_where_they_belong():
    attrs = world.parse_many(["a large red square in the center on a blue background"])
    img = world.render(attrs, 32, torch.Generator().manual_seed(0), noise=False)[0] * 255
    centre, corner = img[:, 16, 16], img[:, 1, 1]
    assert (centre - torch.tensor([220.0, 30, 30])).abs().max() < 40  # shade/lighting jitter only
    assert (corner - torch.tensor([30.0, 60, 220])).abs().max() < 20  # background gradient only


def test_layout_keeps_shapes_inside_their_cell_and_canvas():
    attrs = world.random_attributes(4000, torch.Generator().manual_seed(0))
    lay = world.sample_layout(attrs, torch.Generator().manual_seed(1))
    assert (lay.cx - lay.half_extent >= -1e-6).all() and (lay.cx + lay.half_extent <= 1 + 1e-6).all()
    col = (lay.cx * 3).floor().long().clamp(0, 2)
    row = (lay.cy * 3).floor().long().clamp(0, 2)
    assert torch.equal(row * 3 + col, attrs.position)
    small = attrs.size == 0
    assert lay.half_extent[small].max() < lay.half_extent[~small].min()


def test_prompt_sets_are_deterministic_disjoint_and_committed():
    sets = make_prompt_sets()
    assert len(sets["toy_30"]) == 30 and len(sets["toy_300"]) >= 300 and len(sets["toy_eval"]) >= 64
    assert not set(sets["toy_eval"]) & set(sets["toy_300"])
    assert set(sets["toy_30"]) <= set(sets["toy_300"])
    for name, prompts in sets.items():
        stale = f"data/prompts/{name}.txt is stale: rerun python -m ddpo_study.toy.prompt_sets"
        assert load_prompts(name) == prompts, stale
    assert len(load_prompts("sd_animals_30")) == 30 and len(load_prompts("sd_animals_400")) >= 300


def test_missing_prompt_file_is_a_clear_error(tmp_path):
    with pytest.raises(PromptSetError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptSetError, match="holds no prompts"):
        load_prompts(str(tmp_path / "empty.txt"))


def test_tokenizer_covers_the_grammar_and_pools_at_eos():
    tok = build_tokenizer(world.vocabulary())
    ids = tok(world.caption(world.all_attribute_combinations()), padding="max_length",
              max_length=tok.model_max_length, truncation=True).input_ids
    assert all(tok.unk_token_id not in row for row in ids)
    assert all(row[0] == tok.bos_token_id and tok.eos_token_id in row for row in ids)
    assert tok.eos_token_id != 2  # CLIP's legacy argmax pooling would kick in
