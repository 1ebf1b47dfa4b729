"""Rendering of synthetic pedestrians: pure functions of their parameters and the generator."""

from __future__ import annotations

import numpy as np
import pytest

from reid.data import render

SIZE = (64, 32)
SEEDS = range(24)  # enough draws to reach every view, pattern, bag, lower garment and style


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def scene(seed: int) -> tuple[render.Camera, render.Track]:
    camera = render.sample_camera(rng(1000 + seed))
    return camera, render.sample_track(render.sample_identity(rng(seed)), camera, rng(2000 + seed))


def frame(kind: str, seed: int) -> np.ndarray:
    camera, track = scene(seed)
    if kind == "tracklet":
        return render.render_tracklet_frame(camera, track, seed % 5, rng(3000 + seed), SIZE)
    if kind == "false_detection":
        return render.render_false_detection(camera, rng(3000 + seed), SIZE)
    return render.render_junk(camera, rng(3000 + seed), SIZE)


@pytest.mark.parametrize("sample", [render.sample_identity, render.sample_camera])
def test_sampling_is_deterministic_for_a_seed(sample):
    assert [sample(rng(s)) for s in SEEDS] == [sample(rng(s)) for s in SEEDS]
    assert sample(rng(0)) != sample(rng(1))


def test_track_is_deterministic_for_a_seed():
    assert [scene(s) for s in SEEDS] == [scene(s) for s in SEEDS]
    camera, track = scene(0)
    assert render.sample_track(track.identity, camera, rng(1)) != render.sample_track(track.identity, camera, rng(2))


@pytest.mark.parametrize("kind", ["tracklet", "false_detection", "junk"])
def test_images_are_deterministic_for_a_seed(kind):
    first = [frame(kind, s) for s in SEEDS]
    # Rendered again in another order: nothing carries over from one image to the next.
    again = {s: frame(kind, s) for s in reversed(SEEDS)}
    for s, image in zip(SEEDS, first):
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert np.array_equal(image, again[s]), f"{kind} seed {s} differs on a second render"
    assert not np.array_equal(first[0], first[1])


def test_rendering_touches_no_global_random_state():
    before = np.random.get_state()
    frame("tracklet", 0)
    frame("junk", 1)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


def test_the_generator_is_the_only_randomness():
    """Same parameters, generators in the same state: the same pixels; another state: others."""
    camera, track = scene(3)
    a = render.render_tracklet_frame(camera, track, 2, rng(7), SIZE)
    b = render.render_tracklet_frame(camera, track, 2, rng(7), SIZE)
    c = render.render_tracklet_frame(camera, track, 2, rng(8), SIZE)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
