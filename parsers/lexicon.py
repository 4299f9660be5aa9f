"""Small English word lists shared by the robust and fallback parsers (general vocabulary, not dataset-specific)."""

from __future__ import annotations

COLOURS = frozenset("""
red orange yellow green blue purple pink brown gray grey black white beige teal tan gold golden silver
violet indigo cyan magenta maroon navy turquoise lavender crimson scarlet ivory cream khaki olive lime
aqua azure amber bronze copper burgundy charcoal coral emerald fuchsia lilac mauve ochre peach plum ruby
rust salmon sapphire sepia taupe vermilion blonde blond brunette auburn multicolored multicoloured colorful
colourful rainbow whitish reddish bluish greenish yellowish pinkish brownish grayish greyish purplish
""".split())

# First words of two-word colours ("light blue", "navy blue", "hot pink"): merged with a following colour.
SHADES = frozenset("""
light dark pale bright deep navy sky baby royal hot neon pastel dusty lime forest olive mint sea powder steel
midnight electric jet blood cherry rose ice pearl off soft vivid muted dull brilliant rich warm cool bold
""".split())

MATERIALS = frozenset("""
leather stone metal metallic glass wood wooden plastic paper brick steel iron gold silver copper bronze brass
velvet silk cotton wool woolen woollen denim fabric marble granite concrete ceramic porcelain clay rubber
felt tile bamboo straw wicker lace fur cardboard canvas chrome aluminum aluminium titanium tin jade satin
linen suede nylon polyester cashmere corduroy tweed burlap sandstone wax cork crochet knit knitted quilted
glazed terracotta plaster pewter platinum lego chocolate diamond
""".split())

# Nouns used as attributes before another noun (shape / age / pattern nouns): "crescent sofa", "baby dragon".
ATTRIBUTE_NOUNS = frozenset("""
baby teardrop crescent polka giant miniature mini dwarf plaid tartan
""".split())

MULTIWORD_MODIFIERS = frozenset({
    ("stainless", "steel"), ("rose", "gold"), ("wrought", "iron"), ("cast", "iron"), ("sterling", "silver"),
    ("faux", "fur"), ("faux", "leather"), ("polka", "dot"), ("polka", "dotted"),
})

# Two-word names whose first word would otherwise count as a modifier (colour, material, participle).
LEXICAL_COMPOUNDS = frozenset({
    ("golden", "retriever"), ("hot", "dog"), ("hot", "dogs"), ("teddy", "bear"), ("teddy", "bears"),
    ("paper", "towel"), ("ice", "cream"), ("hot", "air"), ("polar", "bear"),
    ("french", "fries"), ("double", "decker"), ("soda", "can"), ("tin", "can"), ("trash", "can"),
    ("garbage", "can"), ("paint", "can"), ("magnifying", "glass"), ("rolling", "pin"), ("measuring", "cup"),
    ("watering", "can"), ("vending", "machine"), ("washing", "machine"), ("dining", "table"), ("dining", "room"),
    ("living", "room"), ("swimming", "pool"), ("frying", "pan"), ("cutting", "board"), ("sleeping", "bag"),
    ("fishing", "rod"), ("running", "shoes"), ("baking", "sheet"), ("shopping", "cart"), ("parking", "lot"),
    ("traffic", "light"), ("stop", "sign"), ("fire", "hydrant"), ("wine", "glass"), ("glass", "slipper"),
    ("stained", "glass"), ("sea", "lion"), ("guinea", "pig"),
})

# Words that are determiners or quantities rather than attributes.
QUANTIFIERS = frozenset("""
some many several few all both each every other another various numerous multiple more most much only such
any no own certain enough less least lots plenty same whole entire next last
""".split())

DEGREE_ADVERBS = frozenset("""
very rather quite extremely really so too slightly fairly super incredibly highly pretty somewhat
""".split())

COPULAS = frozenset({"be", "look", "seem", "appear", "become", "remain", "stay", "turn", "feel", "get", "grow"})

NEGATIONS = frozenset({"not", "n't", "never", "no"})

SIZE_ADJECTIVES = frozenset("""
big small large tiny huge little giant enormous tall short long wide narrow thick thin fat slim massive
miniature mini
""".split())

# Adjectives that small taggers often mistake for nouns before another noun ("a spiky guitar", "an oval mirror").
ADJECTIVES = frozenset("""
spiky furry fluffy fuzzy hairy shiny glossy sparkly glittery sleepy smiley spotted striped checkered dotted
curly wavy bumpy scaly rusty dusty muddy grassy rocky sandy snowy icy leafy bushy silky velvety frosty foggy
misty cloudy sunny rainy stormy smoky oval square round modern vintage antique retro cubic curved skewered
sliced wet dry old new young tall short oblong dark pale bright deep
""".split())
ADJECTIVE_SUFFIXES = ("ular", "ical", "agonal", "idal", "ous", "ful", "less")

PRONOUNS = frozenset("""
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs this that
these those who whom whose which what something anything nothing everything someone anyone everyone itself
""".split())


def is_two_word_modifier(first: str, second: str) -> bool:
    """Whether two lowercase words form one modifier: a shade and a colour ("light blue") or a fixed pair."""
    return (first in SHADES and second in COLOURS) or (first, second) in MULTIWORD_MODIFIERS


def looks_adjectival(word: str) -> bool:
    """Colour, material, attribute noun or common adjective (whatever the tagger said)."""
    w = word.lower()
    return (w in COLOURS or w in MATERIALS or w in ATTRIBUTE_NOUNS or w in ADJECTIVES
            or (len(w) > 5 and w.endswith(ADJECTIVE_SUFFIXES)))
