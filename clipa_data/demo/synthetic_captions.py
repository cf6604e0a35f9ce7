"""LAION-like synthetic captions for demos, tests and benchmarks (seeded, no downloads).

The mix follows what web alt-text looks like: plain scene descriptions, product titles with
made-up brands, SKUs and prices, stock-photo titles, travel and news-photo captions, noisy
alt-text (HTML entities, emoji, other scripts, file names, mojibake) and long multi-sentence
captions. ``hard_captions`` lists the inputs that break naive text code.
"""

from __future__ import annotations

import random


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


ADJECTIVES = _words(
    "red green blue yellow black white old young small large happy beautiful modern vintage "
    "wooden golden rustic cozy bright dark empty crowded quiet famous tiny giant fluffy shiny "
    "abstract colorful elegant handmade wild frozen sunny rainy misty ancient urban tropical"
)
NOUNS = _words(
    "dog cat woman man child girl boy car bicycle house kitchen table chair window street "
    "beach mountain lake river tree flower garden city bridge train bus boat plane bird horse "
    "cup plate pizza cake sandwich laptop phone book lamp sofa bed mirror door wall field "
    "forest sky sunset cloud road shop market church castle tower statue painting guitar "
    "shoes dress jacket shirt bag watch ring necklace poster logo pattern texture background"
)
VERBS = _words(
    "sitting standing running walking sleeping playing eating holding riding looking "
    "smiling jumping parked flying swimming reading cooking waiting lying hanging"
)
PREPOSITIONS = _words("on;in;near;under;next to;behind;beside;above;at;with;by;over", ";")
PLACES = (
    ("Paris", "France"),
    ("Rome", "Italy"),
    ("Kyoto", "Japan"),
    ("Lisbon", "Portugal"),
    ("Cusco", "Peru"),
    ("Cape Town", "South Africa"),
    ("Sydney", "Australia"),
    ("Vancouver", "Canada"),
    ("Hanoi", "Vietnam"),
    ("Prague", "Czech Republic"),
    ("Marrakesh", "Morocco"),
    ("Santorini", "Greece"),
    ("Zermatt", "Switzerland"),
)
PEOPLE = _words(
    "John Smith;Maria Garcia;Wei Chen;Aisha Khan;Lars Nielsen;Sophie Martin;Kenji Sato;"
    "Olga Ivanova;Carlos Silva;Fatima Zahra",
    ";",
)
MONTHS = _words(
    "January February March April May June July August September October November December"
)
NOISY = (
    "Tom &amp; Jerry",
    "Fish &amp;amp; Chips",
    "&quot;Best Seller&quot;",
    "Rock &#39;n&#39; Roll",
    "50&nbsp;% off",
    "\u201cSummer\u201d collection \u2013 2019",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u20ac4,50",
    "\U0001f600\U0001f389 party time",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467 family \U0001f1fa\U0001f1f8",
    "\u6771\u4eac\u30bf\u30ef\u30fc \u591c\u666f",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u0395\u039b\u039b\u0391\u03a3 \u039f\u0394\u039f\u03a3",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u092d\u093e\u0930\u0924",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\ud55c\uad6d \uc11c\uc6b8 \uc57c\uacbd",
    "caf\u00c3\u00a9 don\u00e2\u20ac\u2122t",
    "\uff33\uff41\uff4c\uff45 \uff11\uff10\uff10",
    "\ufb01sh \ufb02ower",
    "e\u0301te\u0301 cre\u0300me",
    "IMG_2034.JPG",
    "DSC00123.jpeg",
    "screenshot-2021-03-04 at 10.15.32",
    "https://example.com/img/photo-123.png",
    "#travel #sunset #nofilter",
    "<b>SALE</b> !!!",
    "\u2605\u2605\u2605\u2605\u2606 4/5",
    "\u00a9 2020 Getty Images\u00ae",
    "size: 10\u00bd\u2033 \u00d7 8\u2033",
    "price\u00a0\u00a319.99",
    "zero\u200bwidth\ufeffjoin",
)


def _brand(rng: random.Random) -> str:
    syllables = _words("ka lo mi ra ven tor zu bel ix ar no sel pri qua dex")
    return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()


def _scene(rng: random.Random) -> str:
    subject = f"{rng.choice(['A', 'The', 'Two', 'An old', 'Three'])} {rng.choice(ADJECTIVES)} "
    subject += rng.choice(NOUNS) + ("s" if rng.random() < 0.3 else "")
    place = f"{rng.choice(PREPOSITIONS)} {rng.choice(['a', 'the'])} "
    place += f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    end = rng.choice([".", "", ".", " .", "!"])
    return f"{subject} {rng.choice(VERBS)} {place}{end}"


def _product(rng: random.Random) -> str:
    sku = f"{rng.choice('ABCDEFGHJKLMNPRSTXZ')}{rng.choice('ABCDEFGHJK')}-{rng.randint(100, 99999)}"
    price = f"${rng.randint(3, 999)}.{rng.randint(0, 99):02d}"
    size = rng.choice(["S", "M", "L", "XL", "10 x 12 in", "500ml", "2-Pack", "Queen Size"])
    parts = [_brand(rng), rng.choice(ADJECTIVES).title(), rng.choice(NOUNS).title(), size]
    return f"{' '.join(parts)} - {sku} | {price}"


def _stock(rng: random.Random) -> str:
    return (
        f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS)} {rng.choice(PREPOSITIONS)} "
        f"{rng.choice(NOUNS)} {rng.choice(['stock photo', 'royalty free image', 'vector'])} "
        f"{rng.randint(100000, 999999999)}"
    )


def _travel(rng: random.Random) -> str:
    city, country = rng.choice(PLACES)
    return (
        f"View of the {rng.choice(NOUNS)} at {rng.choice(['sunset', 'dawn', 'night', 'noon'])}, "
        f"{city}, {country}"
    )


def _news(rng: random.Random) -> str:
    city, _ = rng.choice(PLACES)
    return (
        f"{rng.choice(PEOPLE)} speaks during a press conference in {city} on "
        f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1990, 2023)}. "
        f"(Photo by {rng.choice(PEOPLE)}/Getty Images)"
    )


def _noisy(rng: random.Random) -> str:
    pieces = [rng.choice(NOISY) for _ in range(rng.randint(1, 3))]
    pieces.insert(rng.randint(0, len(pieces)), _scene(rng) if rng.random() < 0.5 else _stock(rng))
    return rng.choice([" ", " - ", "  ", "\n", " | "]).join(pieces)


def _long(rng: random.Random) -> str:
    return " ".join(
        rng.choice([_scene, _news, _travel])(rng) for _ in range(rng.randint(3, 9))
    ).replace("..", ".")


KINDS = (
    (_scene, 38),
    (_product, 16),
    (_stock, 14),
    (_travel, 10),
    (_news, 8),
    (_noisy, 7),
    (_long, 7),
)


def laion_like_captions(count: int, seed: int = 0) -> list[str]:
    """``count`` captions in LAION-like proportions (deterministic for a seed)."""
    rng = random.Random(seed)
    makers = [maker for maker, _ in KINDS]
    weights = [weight for _, weight in KINDS]
    return [rng.choices(makers, weights)[0](rng) for _ in range(count)]


def unicode_heavy_captions(count: int, seed: int = 0) -> list[str]:
    """Captions that are mostly noisy alt-text: entities, emoji, scripts, mojibake, controls."""
    rng = random.Random(seed)
    extras = ["\t", "\x0b", "\x0c", "\r\n", "\x00", "\x7f", "\u2028", "\u00a0", "&", "&&", "&;"]
    out = []
    for _ in range(count):
        text = _noisy(rng)
        if rng.random() < 0.3:
            position = rng.randint(0, len(text))
            text = text[:position] + rng.choice(extras) + text[position:]
        out.append(text)
    return out


def random_codepoint_strings(count: int, seed: int = 0, max_length: int = 24) -> list[str]:
    """Strings of random code points from every plane in use (surrogates excluded)."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFD), (0x1F000, 0x1FAFF)]
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, max_length)):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
            if rng.random() < 0.2:
                chars.append(" ")
        out.append("".join(chars))
    return out


def hard_captions() -> dict[str, str]:
    """Named inputs that break naive text code; each must still give a valid row."""
    return {
        "empty": "",
        "whitespace": " \t\n  \u3000 ",
        "long_5000_words": " ".join(
            f"{ADJECTIVES[i % len(ADJECTIVES)]} {NOUNS[i % len(NOUNS)]}" for i in range(2500)
        ),
        "emoji_cjk": (
            "\U0001f600\U0001f436 \u72ac\u3068\u732b \U0001f469\u200d\U0001f4bb \ud55c\uad6d\uc5b4"
        ),
        "html_entities": (
            "Tom &amp; Jerry &quot;classic&quot; &amp;amp; &lt;b&gt;bold&lt;/b&gt; &#128512;"
        ),
        "punctuation_only": "!!! ... ??? --- *** ,,, ;;; :-)",
        "special_token_text": "a <start_of_text> b <end_of_text> c",
        "mojibake": "caf\u00c3\u00a9 don\u00e2\u20ac\u2122t",
        "control_chars": "a\x00b\x0bc\x1fd\x7fe",
    }
