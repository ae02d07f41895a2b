import pytest
import torch

from flowalign.toy.prompts import PromptParseError
from flowalign.toy.scenes import Placed, generate_scenes, render
from reward_models import build_reward


def score(shapes, prompt):
    out = build_reward("shapes")(render(shapes)[None], [prompt])
    return float(out.scores[0]), out.components


RC = Placed("red", "circle", 8, 8, 9)
RC2 = Placed("red", "circle", 24, 24, 9)
BS = Placed("blue", "square", 24, 8, 9)


def test_all_clauses_right_scores_one():
    assert score([RC, RC2], "two red circles")[0] == 1.0
    assert score([RC, BS], "a red circle left of a blue square")[0] == 1.0
    assert score([RC, RC2, BS], "two red circles and a blue square")[0] == 1.0


def test_each_wrong_clause_costs_its_share():
    # count wrong (1 of 3 clauses)
    assert score([RC], "two red circles")[0] == pytest.approx(2 / 3)
    # shape and count wrong
    assert score([Placed("red", "square", 8, 8, 9)], "a red circle")[0] == pytest.approx(1 / 3)
    # everything wrong: no red at all
    assert score([BS], "a red circle")[0] == 0.0
    # relation wrong only (1 of 7 clauses)
    s, comps = score([RC, BS], "a red circle right of a blue square")
    assert s == pytest.approx(6 / 7) and comps["position"][0] == 0.0
    # triangle vs circle: shape + count of one object wrong (2 of 7)
    assert score([RC, BS], "a red triangle left of a blue square")[0] == pytest.approx(5 / 7)


def test_position_irrelevant_without_relation():
    a = score([RC, BS], "a red circle and a blue square")
    b = score([Placed("red", "circle", 24, 24, 9), Placed("blue", "square", 8, 8, 9)], "a red circle and a blue square")
    assert a[0] == b[0] == 1.0 and torch.isnan(a[1]["position"][0])


def test_generated_scenes_score_one_and_shuffled_lower():
    images, prompts, _ = generate_scenes(24, 11)
    r = build_reward("shapes")
    assert torch.all(r(images, prompts).scores == 1.0)
    assert r(images, prompts[1:] + prompts[:1]).scores.mean() < 0.7


def test_concept_clause_scores_only_the_concepts_clauses():
    r = build_reward("shapes")
    prompts = ["a red circle and a blue square", "a red circle and a blue square", "two blue squares",
               "a red circle left of a blue square"]
    images = torch.stack([render([RC, BS]), render([Placed("green", "circle", 8, 8, 9), BS]), render([BS]),
                          render([Placed("blue", "circle", 8, 8, 9), BS])])
    red = r.concept_scores(images, prompts, "red")
    # red drawn / red replaced by green / no red in the prompt / red replaced by blue
    assert red[0] == 1.0 and red[1] == 0.0 and torch.isnan(red[2]) and red[3] == 0.0
    circle = r.concept_scores(images, prompts, "circle")
    assert circle[0] == 1.0 and circle[1] == 0.0 and torch.isnan(circle[2])  # green circle: no *red* circle
    assert r.concept_scores(images, prompts, "purple") is None


def test_per_shape_clause_components():
    """shape[s] averages the shape clauses of the prompt's s-objects: a square drawn round fails shape[square]
    only, and prompts without squares do not enter it."""
    prompts = ["a red circle and a blue square", "a red circle and a blue square", "two red circles"]
    images = torch.stack([render([RC, BS]), render([RC, Placed("blue", "circle", 24, 8, 9)]), render([RC, RC2])])
    parts = build_reward("shapes")(images, prompts).components
    assert parts["shape[circle]"].tolist() == [1.0, 1.0, 1.0]
    assert parts["shape[square]"][:2].tolist() == [1.0, 0.0] and torch.isnan(parts["shape[square]"][2])
    assert torch.isnan(parts["shape[triangle]"]).all()


def test_prompt_outside_grammar_raises():
    with pytest.raises(PromptParseError, match="purple"):
        build_reward("shapes")(render([RC])[None], ["a purple circle"])


def test_soft_reward_gradient_and_ordering():
    images, prompts, _ = generate_scenes(4, 2)
    x = (images * 0.9 + 0.05).requires_grad_()
    out = build_reward("shapes_soft")(x, prompts)
    out.scores.sum().backward()
    g = x.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    right = build_reward("shapes_soft")(images, prompts).scores
    wrong = build_reward("shapes_soft")(images, prompts[1:] + prompts[:1]).scores
    assert right.mean() > wrong.mean()


def test_quality_clean_vs_noisy():
    images, prompts, _ = generate_scenes(8, 5)
    q = build_reward("shapes_quality")
    clean = q(images, None).scores
    noisy = q((images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1),
              None).scores
    assert torch.all(clean == 1.0)
    assert noisy.max() < 0.8


def _classified(images):
    from flowalign.toy.segment import classify_shape, components
    return [[classify_shape(c) for c in comps] for comps in components(images)]


def test_every_rendered_size_and_offset_is_classified_right():
    shapes = [Placed("green", s, 12 + dx, 13 + dy, size) for s in ("circle", "square", "triangle")
              for size in range(7, 15) for dx in (0.0, 0.25, 0.5, 0.75) for dy in (0.0, 0.5)]
    got = _classified(torch.stack([render([p]) for p in shapes]))
    assert got == [[p.shape] for p in shapes]


def test_one_stray_pixel_does_not_turn_a_square_into_a_circle():
    images = []
    for size in (8, 9, 11, 13):
        square = render([Placed("blue", "square", 16, 16, size)])
        on = torch.nonzero((square - 1).abs().sum(0) > 0)
        (top, left), (bottom, right) = on.min(0).values.tolist(), on.max(0).values.tolist()
        for y, x in ((top - 1, (left + right) // 2), (bottom + 1, left + 1), ((top + bottom) // 2, right + 1),
                     (top + 2, left - 1)):  # one pixel beyond each edge
            img = square.clone()
            img[:, y, x] = square[:, top, left]
            images.append(img)
        img = square.clone()
        img[:, top, left] = 1.0  # one corner pixel missing
        images.append(img)
    assert _classified(torch.stack(images)) == [["square"]] * len(images)
