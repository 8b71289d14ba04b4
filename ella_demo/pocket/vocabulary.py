"""The pocket world's words: what a scene can hold, how captions name it, and the held-out paraphrases.

Every visual property has one training word (the one captions use during training and questions
always use) and paraphrases that never occur in a training caption: the paraphrase prompt set
swaps them in to measure what a pretrained language model knows that an encoder trained only on
this world's captions cannot (ELLA's claim, in miniature).
"""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "cross")
# sRGB of each object colour, far apart from each other and from every background.
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (35, 160, 60),
    "blue": (40, 80, 225),
    "purple": (135, 45, 185),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (125, 125, 125),
}
STYLES = ("filled", "outlined")
SIZES = ("small", "large")
# Side of an object's bounding box in pixels at the world's 64x64 resolution.
SIZE_PIXELS = {"small": 12, "large": 20}
RELATIONS = ("left of", "right of", "above", "below", "next to")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}

# (colour, shape) pairs no training scene contains: the "unseen combinations" prompt set asks for them.
HELD_OUT_PAIRS = (("purple", "triangle"), ("green", "cross"), ("orange", "circle"), ("yellow", "square"))

# Training word -> words that never occur in a training caption (the "paraphrase" prompt set).
PARAPHRASES = {
    "red": ("crimson", "scarlet"),
    "orange": ("amber",),
    "yellow": ("golden", "lemon"),
    "green": ("emerald",),
    "blue": ("navy", "azure"),
    "purple": ("violet",),
    "circle": ("disc", "ball"),
    "square": ("cube", "box"),
    "triangle": ("pyramid",),
    "cross": ("plus sign",),
    "small": ("tiny", "little"),
    "large": ("big", "huge"),
    "white": ("snowy",),
    "black": ("dark",),
    "gray": ("silver",),
    "filled": ("solid",),
    "outlined": ("hollow",),
}
