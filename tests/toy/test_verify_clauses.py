"""Clause-level properties of the verifiable shapes reward and its segmentation (exact counts, relation margin,
distinct relation objects, min_area boundary, 4-connectivity)."""

import pytest
import torch

from flowalign.toy.prompts import ObjectClause, ParsedPrompt, Relation
from flowalign.toy.scenes import PALETTE, Placed, render
from flowalign.toy.segment import components, label_components
from flowalign.toy.verify import VerifyConfig, relation_holds, verify, verify_components


def _verify(shapes, prompt, config=VerifyConfig()):
    scores, parts = verify(render(shapes)[None], [prompt], config)
    return float(scores[0]), {k: float(v[0]) for k, v in parts.items()}


def _painted(*boxes, color="red", size=32):
    """White image with ``color`` painted on the given (y0, y1, x0, x1) half-open pixel boxes."""
    img = torch.ones(3, size, size)
    for y0, y1, x0, x1 in boxes:
        img[:, y0:y1, x0:x1] = torch.tensor(PALETTE[color])[:, None, None]
    return img


def test_over_drawing_fails_the_count_clause():
    """Three red circles for "two red circles": colour and shape right, count wrong → exactly 2/3 (not hackable by
    drawing more)."""
    three = [Placed("red", "circle", 7, 7, 9), Placed("red", "circle", 24, 7, 9), Placed("red", "circle", 16, 24, 9)]
    s, parts = _verify(three, "two red circles")
    assert parts["num_components"] == 3.0
    assert (parts["color"], parts["shape"], parts["count"]) == (1.0, 1.0, 0.0)
    assert s == pytest.approx(2 / 3) and parts["all_correct"] == 0.0
    # the exact count still scores one, one fewer is also wrong
    assert _verify(three[:2], "two red circles")[0] == 1.0
    assert _verify(three, "three red circles")[0] == 1.0
    assert _verify(three, "four red circles")[1]["count"] == 0.0


@pytest.mark.parametrize("relation,axis", [("left of", "x"), ("right of", "x"), ("above", "y"), ("below", "y")])
def test_relation_needs_more_than_the_margin(relation, axis):
    """The object's centroid must lie more than ``margin`` pixels beyond the subject's in the stated direction:
    1.5 px (< margin 2) fails the position clause, 3 px passes, in every direction."""
    sign = 1 if relation in ("left of", "above") else -1
    prompt = f"a red circle {relation} a blue square"

    def scene(offset):
        # subject red circle at (12, 12); blue square offset along the axis, shifted off the other axis
        if axis == "x":
            return [Placed("red", "circle", 12, 6, 9), Placed("blue", "square", 12 + sign * offset, 22, 9)]
        return [Placed("red", "circle", 6, 12, 9), Placed("blue", "square", 22, 12 + sign * offset, 9)]

    for offset, expected in ((1.5, 0.0), (3.0, 1.0)):
        comps = components(render(scene(offset))[None])[0]
        red, blue = sorted(comps, key=lambda c: c.color != "red")
        d = (blue.cx - red.cx) if axis == "x" else (blue.cy - red.cy)
        assert d == pytest.approx(sign * offset)  # the rendered centroids differ by exactly the offset
        s, parts = _verify(scene(offset), prompt)
        assert parts["position"] == expected, (relation, offset)
        assert s == pytest.approx(1.0 if expected else 6 / 7)
    # a custom margin moves the boundary: 3 px fails with margin 4, 1.5 px passes with margin 1
    assert _verify(scene(3.0), prompt, VerifyConfig(margin=4.0))[1]["position"] == 0.0
    assert _verify(scene(1.5), prompt, VerifyConfig(margin=1.0))[1]["position"] == 1.0


def test_relation_holds_is_strict_at_the_margin():
    comps = components(render([Placed("red", "circle", 8, 8, 9), Placed("blue", "square", 12, 24, 9)])[None])[0]
    red, blue = sorted(comps, key=lambda c: c.color != "red")
    assert blue.cx - red.cx == pytest.approx(4.0)
    assert relation_holds(red, blue, "left of", 3.9) and not relation_holds(red, blue, "left of", 4.0)
    assert not relation_holds(red, blue, "right of", 0.0) and not relation_holds(red, red, "left of", 0.0)


def _relation(a, rel, b):
    """A relation prompt built directly (the grammar rejects the same colour and shape twice)."""
    return ParsedPrompt(f"a {a[0]} {a[1]} {rel} a {b[0]} {b[1]}",
                        (ObjectClause(a[0], a[1], 1), ObjectClause(b[0], b[1], 1)), Relation(rel))


def test_relation_object_is_another_component_than_the_subject():
    """The relation's object is picked among the components other than the subject's."""
    big_left, small_right = Placed("red", "circle", 8, 16, 11), Placed("red", "circle", 24, 16, 7)
    # "a red circle left of a red circle", one red circle: nothing to be left of
    one = components(render([big_left])[None])[0]
    assert len(one) == 1
    verdict = verify_components(_relation(("red", "circle"), "left of", ("red", "circle")), one)
    assert verdict.position == 0.0
    # two: the subject is the larger (left) one, the object must be the other (right) one
    two = components(render([big_left, small_right])[None])[0]
    assert sorted(c.area for c in two)[0] < sorted(c.area for c in two)[1]
    assert verify_components(_relation(("red", "circle"), "left of", ("red", "circle")), two).position == 1.0
    # through the grammar: the object's shape is wrong, so its colour-only fallback must not pick the subject
    s, parts = _verify([big_left, small_right], "a red circle left of a red square")
    assert parts["position"] == 1.0
    s, parts = _verify([big_left], "a red circle left of a red square")
    assert parts["position"] == 0.0


def test_min_area_boundary_is_inclusive():
    """A blob of exactly ``min_area`` pixels is a component, one of ``min_area`` − 1 is not."""
    eight = _painted((2, 4, 2, 6))  # 2×4
    seven = _painted((2, 4, 2, 6))
    seven[:, 3, 5] = 1.0  # 7 pixels, still 4-connected
    comps = components(torch.stack([eight, seven]), min_area=8)
    assert [[c.area for c in cs] for cs in comps] == [[8], []]
    comps = components(torch.stack([eight, seven]), min_area=7)
    assert [[c.area for c in cs] for cs in comps] == [[8], [7]]
    # the reward's default min_area (8) decides the count too
    assert VerifyConfig().min_area == 8
    _, parts = verify(torch.stack([eight, seven]), ["a red square", "a red square"])
    assert parts["num_components"].tolist() == [1.0, 0.0]


def test_diagonal_touch_is_two_components():
    """4-connectivity: squares that share only a corner are two blobs; sharing an edge makes one."""
    diagonal = _painted((4, 9, 4, 9), (9, 14, 9, 14))  # (8, 8) and (9, 9) touch at a corner only
    edge = _painted((4, 9, 4, 9), (9, 14, 8, 13))  # (8, 8) and (9, 8) share an edge
    comps = components(torch.stack([diagonal, edge]))
    assert [len(c) for c in comps] == [2, 1]
    assert sorted(c.area for c in comps[0]) == [25, 25] and comps[1][0].area == 50
    _, parts = verify(torch.stack([diagonal]), ["two red squares"])
    assert parts["count"].item() == 1.0
    # label_components directly: a diagonal chain of single pixels is all separate components
    mask = torch.eye(5, dtype=torch.bool)[None]
    labels = label_components(mask)
    assert len(set(labels[0][mask[0]].tolist())) == 5
    cross = torch.zeros(1, 3, 3, dtype=torch.bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    assert len(set(label_components(cross)[0][cross[0]].tolist())) == 1
