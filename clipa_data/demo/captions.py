"""Captions for demo scenes, written the way web alt-text is.

Every caption names the colour and shape of every object it shows, with a count where several
are alike, so the pairs are learnable. Around that: varied word order, filler ("stock photo",
"HD wallpaper", "image of"), background words, random casing, hashtags and a few typos in the
filler.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from clipa_data.demo.scenes import Scene

NUMBER_WORDS = {2: ("two", "2"), 3: ("three", "3")}

BACKGROUND_WORDS = {
    "plain": ("plain", "grey", "simple"),
    "blotchy": ("textured", "grunge", "cloudy"),
    "striped": ("striped", "stripes", "lined"),
    "checkered": ("checkered", "checkerboard", "plaid"),
    "grainy": ("grainy", "paper", "noisy"),
}

TEMPLATES = (
    "{objs}",
    "{objs}",
    "{objs} on {bg} background",
    "stock photo of {objs}",
    "{objs} stock photo",
    "image of {objs}",
    "picture of {objs}",
    "a photo of {objs}",
    "{objs} - HD wallpaper",
    "{objs} isolated on {bg} background, vector illustration",
    "abstract geometric art with {objs}",
    "Free download: {objs} | {site}",
    "IMG_{n} {objs}",
    "{objs} clipart for kids",
    "simple {objs} icon on a {bg} texture",
    "geometric shapes: {objs}",
    "{objs} royalty free image {n}",
    "{bg} background with {objs}",
)

SITES = ("shutterstock", "pixabay", "dreamstime", "pinterest", "wallpaperaccess", "etsy")
TAGS = (" #shapes", " #geometry #art", " jpg", " 1920x1080", " (2019)", " - page 2", " png")
JOINERS = (" and ", ", ", " with ", " & ", " and ")


def _object_phrase(rng: np.random.Generator, colour: str, shape: str, count: int) -> str:
    if count == 1:
        forms = (
            f"a {colour} {shape}",
            f"{colour} {shape}",
            f"one {colour} {shape}",
            f"{shape} in {colour}",
            f"{colour} coloured {shape}",
            f"{colour}-colored {shape}",
            f"{colour} {shape} shape",
        )
    else:
        number = NUMBER_WORDS.get(count, (str(count), str(count)))
        forms = (
            f"{number[0]} {colour} {shape}s",
            f"{number[1]} {colour} {shape}s",
            f"{number[0]} {shape}s in {colour}",
            f"{colour} {shape}s x{count}",
        )
    return forms[int(rng.integers(len(forms)))]


def _typo(rng: np.random.Generator, word: str) -> str:
    """Swap two neighbouring letters or drop one: the kind of slip alt-text has."""
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 2))
    if rng.random() < 0.5:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + word[i + 1 :]


def _noisy(rng: np.random.Generator, text: str, protected: set[str]) -> str:
    """Typos in filler words (never in colour/shape words), then random casing."""
    if rng.random() < 0.1:
        words = text.split(" ")
        candidates = [i for i, w in enumerate(words) if not any(p in w.lower() for p in protected)]
        if candidates:
            i = candidates[int(rng.integers(len(candidates)))]
            words[i] = _typo(rng, words[i])
            text = " ".join(words)
    casing = rng.random()
    if casing < 0.2:
        text = text.title()
    elif casing < 0.35:
        text = text[:1].upper() + text[1:]
    elif casing < 0.4:
        text = text.upper()
    return text


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """An alt-text caption naming every (colour, shape) group of ``scene`` with its count."""
    groups = Counter((obj.colour, obj.shape) for obj in scene.objects)
    order = list(groups)
    rng.shuffle(order)
    phrases = [
        _object_phrase(rng, colour, shape, groups[(colour, shape)]) for colour, shape in order
    ]
    joiner = JOINERS[int(rng.integers(len(JOINERS)))]
    objs = joiner.join(phrases)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    bg_words = BACKGROUND_WORDS[scene.background]
    text = template.format(
        objs=objs,
        bg=bg_words[int(rng.integers(len(bg_words)))],
        site=SITES[int(rng.integers(len(SITES)))],
        n=int(rng.integers(1000, 9999)),
    )
    if rng.random() < 0.12:
        text += TAGS[int(rng.integers(len(TAGS)))]
    protected = {word for pair in groups for word in pair}
    return _noisy(rng, text, protected)
