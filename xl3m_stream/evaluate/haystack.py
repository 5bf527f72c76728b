"""Seeded filler generators for the evaluation tasks: procedural prose and a service log.

Both are endless iterators of *units* (a unit is one sentence or one log line, carrying its
own trailing separator), so a task can take exactly as many as its target length needs and
the text is the same prefix whatever the length. Everything is self-written and drawn from a
``random.Random`` the caller seeds; nothing is downloaded and no global state is used.

Guarantees the task generators rely on:

* prose contains no digits, no all-capital words, no hyphenated word pairs and none of the
  words the needles use ("secret", "code", "archive", "magic", "pass key", "VAR"), so a random
  code, number, key or variable name can only occur where a needle puts it;
* routine log lines never contain any incident phrase of :data:`INCIDENTS` (case-insensitive).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

# --------------------------------------------------------------------------------------
# Procedural prose
# --------------------------------------------------------------------------------------

_NAMES: tuple[tuple[str, str, str], ...] = tuple(
    (n, "she", "her")
    for n in (
        "Clara",
        "Ada",
        "Miriam",
        "Helen",
        "Rosa",
        "Agnes",
        "Lydia",
        "Nora",
        "Edith",
        "Martha",
        "Irene",
        "Vera",
        "Alice",
        "Beatrice",
        "Greta",
        "Ines",
        "Judith",
        "Louisa",
        "Maud",
        "Olive",
        "Paula",
        "Ruth",
        "Sylvia",
        "Tessa",
        "Ursula",
        "Wilma",
        "Eleanor",
        "Frieda",
        "Hazel",
        "Ivy",
    )
) + tuple(
    (n, "he", "his")
    for n in (
        "Tomas",
        "Arthur",
        "Felix",
        "Henry",
        "Oskar",
        "Walter",
        "Samuel",
        "Edwin",
        "Hugo",
        "Leon",
        "Victor",
        "Albert",
        "Bernard",
        "Caspar",
        "Dorian",
        "Ernest",
        "Gideon",
        "Isaac",
        "Jonas",
        "Klaus",
        "Lionel",
        "Marcus",
        "Nathan",
        "Otto",
        "Percy",
        "Rupert",
        "Simon",
        "Theo",
        "Vincent",
        "Willem",
    )
)

_ROLES = (
    "baker",
    "engineer",
    "fisherman",
    "teacher",
    "gardener",
    "merchant",
    "sailor",
    "painter",
    "doctor",
    "carpenter",
    "librarian",
    "farmer",
    "student",
    "mayor",
    "poet",
    "nurse",
    "shepherd",
    "potter",
    "weaver",
    "blacksmith",
    "architect",
    "clerk",
    "chemist",
    "astronomer",
    "musician",
    "tailor",
    "miner",
    "pilot",
    "cook",
    "surveyor",
    "innkeeper",
    "ferryman",
    "bookbinder",
    "glassblower",
    "beekeeper",
    "stonemason",
    "printer",
    "cartographer",
    "watchmaker",
    "botanist",
    "midwife",
    "miller",
    "postman",
    "lamplighter",
    "shipwright",
    "cobbler",
    "organist",
    "judge",
)

_PLACES = (
    "the harbour",
    "the valley",
    "the market",
    "the old mill",
    "the river bank",
    "the village square",
    "the northern hills",
    "the library",
    "the train station",
    "the orchard",
    "the chapel",
    "the lighthouse",
    "the bakery",
    "the town hall",
    "the school yard",
    "the fish market",
    "the stone bridge",
    "the lower meadow",
    "the abbey ruins",
    "the canal",
    "the boat yard",
    "the quarry",
    "the east gate",
    "the tannery",
    "the post office",
    "the weir",
    "the common",
    "the high street",
    "the cathedral steps",
    "the beech wood",
    "the salt marsh",
    "the dunes",
    "the vineyard",
    "the cattle fair",
    "the reading room",
    "the greenhouse",
    "the old barracks",
    "the rope walk",
    "the clock tower",
    "the coaching inn",
    "the ferry landing",
    "the pier",
)

_TOWN_A = (
    "Ash",
    "Bright",
    "Cold",
    "Elder",
    "Fair",
    "Glen",
    "High",
    "Iron",
    "Long",
    "Maple",
    "North",
    "Oak",
    "Red",
    "Silver",
    "Stone",
    "West",
    "Wind",
    "Wolf",
    "Green",
    "Black",
    "Brack",
    "Thorn",
    "Hazel",
    "Rook",
    "Moss",
    "Kings",
    "Salt",
    "Mill",
    "Bell",
    "Fern",
)
_TOWN_B = (
    "field",
    "brook",
    "ford",
    "haven",
    "moor",
    "ton",
    "wick",
    "bury",
    "dale",
    "gate",
    "hollow",
    "mere",
    "stead",
    "worth",
    "crest",
    "combe",
    "ley",
    "holm",
    "by",
    "thorpe",
)

_OBJECTS = (
    "lantern",
    "map",
    "letter",
    "bridge",
    "boat",
    "clock",
    "garden",
    "wagon",
    "fence",
    "well",
    "bell",
    "kettle",
    "ledger",
    "telescope",
    "compass",
    "basket",
    "quilt",
    "violin",
    "window",
    "staircase",
    "chest",
    "cart",
    "sundial",
    "barometer",
    "loom",
    "anvil",
    "easel",
    "rowboat",
    "weathervane",
    "wheelbarrow",
    "harp",
    "hourglass",
    "spinning wheel",
    "tea set",
    "oil lamp",
    "mirror",
    "bookcase",
    "cabinet",
    "rocking chair",
    "piano",
    "trunk",
    "fishing net",
    "kite",
    "birdhouse",
    "gate",
    "chimney",
    "mural",
    "fountain",
    "carriage",
    "sketchbook",
    "almanac",
)

_ADJECTIVES = (
    "quiet",
    "narrow",
    "ancient",
    "crowded",
    "weathered",
    "bright",
    "dusty",
    "heavy",
    "crooked",
    "faded",
    "polished",
    "curious",
    "modest",
    "enormous",
    "tiny",
    "elegant",
    "plain",
    "sturdy",
    "fragile",
    "familiar",
    "forgotten",
    "colourful",
    "peculiar",
    "gloomy",
    "handsome",
    "rusty",
    "shabby",
    "splendid",
    "humble",
    "tidy",
    "untidy",
    "worn",
    "fresh",
    "damp",
    "warm",
    "chilly",
    "silent",
    "noisy",
    "graceful",
    "awkward",
    "remarkable",
    "ordinary",
    "slender",
    "broad",
    "shallow",
    "steep",
    "pale",
    "golden",
    "grey",
    "crimson",
    "velvet",
    "lovely",
    "sunlit",
    "overgrown",
    "draughty",
    "cosy",
    "spotless",
    "battered",
    "gleaming",
    "hidden",
)

_PERSON_ADJ = (
    "quiet",
    "gentle",
    "curious",
    "modest",
    "cheerful",
    "gloomy",
    "restless",
    "patient",
    "stubborn",
    "careful",
    "generous",
    "solemn",
    "lively",
    "sensible",
    "remarkable",
    "humble",
    "shy",
    "clever",
    "kind",
    "proud",
    "weary",
    "talkative",
    "cautious",
    "forgetful",
    "thrifty",
    "honest",
    "wise",
    "young",
    "elderly",
    "cheerless",
    "tireless",
    "fearless",
    "gracious",
)

_COLOURS = (
    "blue",
    "green",
    "red",
    "yellow",
    "white",
    "black",
    "brown",
    "grey",
    "amber",
    "violet",
    "ochre",
    "copper",
    "silver",
    "scarlet",
    "indigo",
    "olive",
)

_ANIMALS = (
    "swallow",
    "heron",
    "fox",
    "badger",
    "goose",
    "sparrow",
    "owl",
    "hare",
    "otter",
    "deer",
    "crow",
    "gull",
    "pony",
    "goat",
    "cat",
    "dog",
    "hedgehog",
    "robin",
    "starling",
    "magpie",
    "lamb",
    "mule",
    "rabbit",
    "kingfisher",
)

_PLANTS = (
    "roses",
    "apple trees",
    "lavender",
    "barley",
    "wild thyme",
    "poppies",
    "oaks",
    "willows",
    "ivy",
    "tulips",
    "pear trees",
    "hops",
    "ferns",
    "heather",
    "sunflowers",
    "beans",
    "rhubarb",
    "hawthorn",
    "clover",
    "bluebells",
)

_FOODS = (
    "bread",
    "soup",
    "cheese",
    "plum cake",
    "roasted chestnuts",
    "honey",
    "apple pie",
    "porridge",
    "smoked fish",
    "onion tart",
    "barley stew",
    "ginger biscuits",
    "cider",
    "pickled herring",
    "lentil soup",
    "currant buns",
    "mushroom pie",
    "fresh butter",
)

_MATERIALS = (
    "oak",
    "pine",
    "brass",
    "copper",
    "slate",
    "granite",
    "linen",
    "wool",
    "clay",
    "glass",
    "iron",
    "walnut",
    "leather",
    "willow",
    "marble",
    "tin",
)

_SEASONS = ("spring", "summer", "autumn", "winter")

_TIMES = (
    "in the early morning",
    "by late afternoon",
    "every spring",
    "during the long winter",
    "on the first warm day of the year",
    "long before the railway came",
    "some years later",
    "that evening",
    "at dawn",
    "after the harvest",
    "on market days",
    "before the storm",
    "every other week",
    "in those days",
    "once the snow had melted",
    "just after noon",
    "on quiet Sundays",
    "late at night",
    "during the fair",
    "at the turn of the season",
    "when the tide was low",
    "after supper",
    "for many years",
    "on rainy afternoons",
    "at the end of each month",
    "while the bells were ringing",
    "during the flood year",
    "in the weeks before the wedding",
    "now and then",
    "by the end of the summer",
)

_VERBS_T = (
    "repaired",
    "painted",
    "carried",
    "visited",
    "described",
    "measured",
    "studied",
    "sold",
    "built",
    "cleaned",
    "opened",
    "noticed",
    "borrowed",
    "mended",
    "sketched",
    "planted",
    "delivered",
    "counted",
    "polished",
    "examined",
    "guarded",
    "admired",
    "replaced",
    "moved",
    "decorated",
    "inspected",
    "rebuilt",
    "photographed",
    "catalogued",
    "restored",
    "sheltered",
    "praised",
    "ignored",
    "questioned",
    "discovered",
    "fixed",
    "tidied",
    "weighed",
    "wrapped",
    "traded",
    "inherited",
    "lent",
    "found",
    "lost",
    "sorted",
    "copied",
    "valued",
    "kept",
)

_VERBS_I = (
    "waited",
    "laughed",
    "wandered off",
    "rested",
    "hesitated",
    "worked late",
    "sang quietly",
    "walked home",
    "listened carefully",
    "sighed",
    "smiled",
    "nodded",
    "kept walking",
    "stayed silent",
    "looked away",
    "hurried on",
    "paused for a moment",
    "sat down",
    "left early",
    "stood by the door",
    "read for an hour",
    "fell asleep",
    "went back inside",
    "watched the road",
    "wrote a short note",
    "changed the subject",
    "took a deep breath",
)

_ADVERBS = (
    "slowly",
    "carefully",
    "quietly",
    "happily",
    "patiently",
    "eagerly",
    "reluctantly",
    "proudly",
    "briefly",
    "gently",
    "suddenly",
    "cheerfully",
    "thoughtfully",
    "nervously",
    "calmly",
    "boldly",
    "openly",
    "politely",
    "stubbornly",
    "warmly",
    "absently",
    "firmly",
)

_ABSTRACTS = (
    "patience",
    "memory",
    "the weather",
    "trade",
    "history",
    "friendship",
    "the harvest",
    "the price of bread",
    "the tides",
    "local customs",
    "music",
    "mathematics",
    "navigation",
    "old age",
    "the future",
    "good manners",
    "honest work",
    "the changing seasons",
    "politics",
    "the railway",
    "rumours",
    "the river",
    "hospitality",
    "craftsmanship",
    "loyalty",
    "the art of waiting",
    "small kindnesses",
    "the cost of coal",
    "distant cities",
    "the sea",
    "letters from abroad",
    "the old roads",
    "family recipes",
    "the parish accounts",
)

_OPINIONS = (
    "Most people agreed that",
    "It was often said that",
    "Some claimed that",
    "According to the neighbours,",
    "Everyone in town knew that",
    "The older residents insisted that",
    "Few would deny that",
    "It seemed to many that",
    "Visitors were often told that",
    "The local paper once reported that",
    "Children grew up believing that",
    "There was a saying that",
    "It is still remembered that",
)

_NUMBER_WORDS = (
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "a dozen",
    "several",
    "a few",
    "many",
    "twenty",
    "forty",
    "a hundred",
)

_DISTANCES = (
    "a short walk",
    "half a mile",
    "an hour's ride",
    "two miles",
    "a day's journey",
    "a stone's throw",
    "three streets",
    "a long climb",
)

_TEMPLATES: tuple[str, ...] = (
    "{time}, the {role} {verb_t} the {adj} {object} near {place}.",
    "{name} had lived in {town} for most of {poss} life and knew every {object} on the street.",
    "The {adj} {object} that stood by {place} was said to be older than {town} itself.",
    "Nobody in {town} talked about {abstract} as much as the {role} did.",
    "When {season} came, the {animals} returned to {place}.",
    "{name} {verb_i} {adv}, thinking about {abstract}.",
    "{opinion} the {role} from {town} knew more about {abstract} than anyone.",
    "The road from {town} to {town2} was {distance}, and it passed {place}.",
    "{time}, {name} {verb_t} a {colour} {object} and left it at {place}.",
    "There were {number} {objects} in the shop, each one more {adj} than the last.",
    "The {role} kept a {material} {object} on the shelf and never explained why.",
    "{name} liked {food} more than anything, especially {time}.",
    "The {plant} along {place} were {adj} that year.",
    "A {adj} {animal} often slept beside the {object} at {place}.",
    "{name} and the {role} argued {adv} about {abstract}.",
    "People came from {town2} just to see the {adj} {object}.",
    "{time}, the streets of {town} smelled of {food}.",
    "The {role} {verb_t} the {object} {adv}, as if it were made of glass.",
    "It took {number} days to finish the {material} {object} for {place}.",
    "{name} once said that {abstract} mattered more than money.",
    "The walls of {place} were painted {colour}, though the paint had begun to peel.",
    "Every {season}, {name} planted {plant} behind the house.",
    "No one could remember who had {verb_t} the {object} in {place}.",
    "The {padj} {role} lived above {place} with a {animal} and a {object}.",
    "{opinion} {season} in {town} was the best time of the year.",
    "{name} wrote long letters about {abstract} to a friend in {town2}.",
    "The {object} was heavier than it looked, and {name} {verb_i}.",
    "On the table lay a {colour} {object}, a loaf of bread and a pot of {food}.",
    "The {roles} of {town} met {time} to talk about {abstract}.",
    "{time}, the {animals} gathered near {place}.",
    "{name} {verb_t} the {object} that the {role} had {verb_t2}.",
    "The {material} {object} had been in the family for {number} generations.",
    "Nobody expected the {role} to be so {padj}.",
    "{name} preferred {abstract} to gossip, which made {pron} unusual in {town}.",
    "A {adj} wind blew across {place} and rattled the {object}.",
    "The children of {town} were told never to touch the {object} at {place}.",
    "{time}, the {role} {verb_i} and then {verb_i2}.",
    "{name} bought {food} from the {role} and carried it home {adv}.",
    "There was a {adj} {object} in every house in {town}.",
    "The {plant} had spread so far that they nearly covered {place}.",
    "{opinion} the {object} at {place} brought good luck.",
    "The {role} measured the {object} {number} times before cutting anything.",
    "{name} remembered the {season} when the river froze over.",
    "The {adj} smell of {food} drifted out of {place}.",
    "Somewhere near {place}, a {animal} was calling.",
    "{name} asked the {role} about {abstract}, but received no answer.",
    "The bells of {town} rang {adv} {time}.",
    "It was a {adj} {season}, and the {plant} bloomed late.",
    "The {padj} {role} and {poss2} {animal} walked to {place} {time}.",
    "{name} spent {number} years {gerund} the {object}.",
    "Nobody in {town2} had ever seen such a {adj} {object}.",
    "The {object} in the window was {colour} and {adj}.",
    "{time}, {name} sat by {place} and watched the {animals}.",
    "The {role} said that {abstract} could not be learned from books.",
    "A letter arrived from {town2} asking about the {object}.",
    "The {material} door of {place} creaked {adv} in the wind.",
    "{name} {verb_t} the old {object} and found it still worked.",
    "The path to {place} was {adj} and lined with {plant}.",
    "{opinion} nobody ever left {town} for long.",
    "The {role} kept {number} {animals} and gave each of them a name.",
    "{name} laughed at the idea that {abstract} could be measured.",
    "At {place}, the {role} sold {food} and {objects}.",
    "The {object} had a {adj} crack that no one could explain.",
    "{time}, a {padj} stranger asked the way to {town2}.",
    "{name} had a habit of {gerund} things that did not need it.",
    "Each {season} the {role} {verb_t} the {object} again.",
    "The square in front of {place} was {adj} {time}.",
    "{name} believed that the {role} understood {abstract} better than the teachers did.",
    "The {colour} shutters of {place} were closed {time}.",
    "Rain fell on {place} for {number} days without stopping.",
    "The {role}'s {object} was the most {adj} thing in {town}.",
    "{name} kept the {object} wrapped in {material} cloth.",
    "Long ago, {town} had been famous for its {food}.",
    "The {animals} of {place} were not afraid of people.",
    "{name} and {name2} met at {place} {time}.",
    "{name2} told {name} a long story about {abstract}.",
    "The {role} had {verb_t} more {objects} than anyone could count.",
    "A {adj} silence settled over {place}.",
    "{opinion} the {plant} near {place} were planted by the first {role}.",
    "The {object} was sent to {town2} to be {verb_t}.",
    "{name} could see {place} from {poss} window.",
    "Travellers often stopped in {town} to rest and eat {food}.",
    "The {role} never locked the door of {place}.",
    "{time}, {name} {verb_i}.",
    "The market sold {food}, {objects} and {colour} ribbons.",
    "{name} liked to say that {town} was {distance} from everywhere.",
    "The {adj} {object} was finally {verb_t} {time}.",
    "Nothing about {abstract} surprised the {role} anymore.",
    "The {plant} in the {role}'s garden were the envy of {town}.",
    "{name} and the {animal} walked along {place} {adv}.",
)

_GERUNDS = (
    "repairing",
    "painting",
    "studying",
    "cleaning",
    "polishing",
    "restoring",
    "sketching",
    "guarding",
    "measuring",
    "rebuilding",
    "decorating",
    "describing",
    "admiring",
    "moving",
)

_FIELD_RE = re.compile(r"\{(\w+)\}")
_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_IRREGULAR = {"goose": "geese", "deer": "deer", "sheep": "sheep", "mouse": "mice"}


def plural(noun: str) -> str:
    """English plural of the nouns used here (last word of a compound)."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        p = _IRREGULAR[last]
    elif last.endswith("man"):
        p = last[:-3] + "men"
    elif last.endswith("wife"):
        p = last[:-4] + "wives"
    elif last.endswith(("s", "x", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


@dataclass(frozen=True)
class _ParagraphContext:
    name: tuple[str, str, str]
    name2: tuple[str, str, str]
    role: str
    town: str
    town2: str


def _town(rng: random.Random) -> str:
    return rng.choice(_TOWN_A) + rng.choice(_TOWN_B)


def _fill(template: str, fields: tuple[str, ...], ctx: _ParagraphContext, rng: random.Random) -> str:
    values: dict[str, str] = {}
    for f in fields:
        if f in values:
            continue
        if f == "name":
            values[f] = ctx.name[0]
        elif f == "name2":
            values[f] = ctx.name2[0]
        elif f == "pron":
            values[f] = "her" if ctx.name[1] == "she" else "him"
        elif f == "poss":
            values[f] = ctx.name[2]
        elif f == "poss2":
            values[f] = rng.choice(("her", "his", "their"))
        elif f == "role":
            values[f] = ctx.role if rng.random() < 0.6 else rng.choice(_ROLES)
        elif f == "town":
            values[f] = ctx.town
        elif f == "town2":
            values[f] = ctx.town2
        elif f == "place":
            values[f] = rng.choice(_PLACES)
        elif f == "object":
            values[f] = rng.choice(_OBJECTS)
        elif f == "adj":
            values[f] = rng.choice(_ADJECTIVES)
        elif f == "padj":
            values[f] = rng.choice(_PERSON_ADJ)
        elif f == "colour":
            values[f] = rng.choice(_COLOURS)
        elif f == "animal":
            values[f] = rng.choice(_ANIMALS)
        elif f == "animals":
            values[f] = plural(rng.choice(_ANIMALS))
        elif f == "objects":
            values[f] = plural(rng.choice(_OBJECTS))
        elif f == "roles":
            values[f] = plural(ctx.role)
        elif f == "plant":
            values[f] = rng.choice(_PLANTS)
        elif f == "food":
            values[f] = rng.choice(_FOODS)
        elif f == "material":
            values[f] = rng.choice(_MATERIALS)
        elif f == "season":
            values[f] = rng.choice(_SEASONS)
        elif f == "time":
            values[f] = rng.choice(_TIMES)
        elif f in ("verb_t", "verb_t2"):
            values[f] = rng.choice(_VERBS_T)
        elif f in ("verb_i", "verb_i2"):
            values[f] = rng.choice(_VERBS_I)
        elif f == "adv":
            values[f] = rng.choice(_ADVERBS)
        elif f == "abstract":
            values[f] = rng.choice(_ABSTRACTS)
        elif f == "opinion":
            values[f] = rng.choice(_OPINIONS)
        elif f == "number":
            values[f] = rng.choice(_NUMBER_WORDS)
        elif f == "distance":
            values[f] = rng.choice(_DISTANCES)
        elif f == "gerund":
            values[f] = rng.choice(_GERUNDS)
        else:  # pragma: no cover - a template typo
            raise KeyError(f)
    text = _AN.sub(r"\1n ", template.format(**values))
    return text[0].upper() + text[1:]


_PARSED = tuple((t, tuple(_FIELD_RE.findall(t))) for t in _TEMPLATES)


def prose_units(rng: random.Random) -> Iterator[str]:
    """Endless seeded English prose, one sentence per unit.

    Paragraphs of 3 to 8 sentences share a main character, a role and a town, so the text
    reads as loosely connected stories. A unit ends with ``" "`` or, at the end of a
    paragraph, ``"\\n\\n"``.
    """
    while True:
        ctx = _ParagraphContext(
            name=rng.choice(_NAMES),
            name2=rng.choice(_NAMES),
            role=rng.choice(_ROLES),
            town=_town(rng),
            town2=_town(rng),
        )
        n = rng.randint(3, 8)
        for i in range(n):
            template, fields = rng.choice(_PARSED)
            sentence = _fill(template, fields, ctx, rng)
            yield sentence + ("\n\n" if i == n - 1 else " ")


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def file_units(paths: Sequence[str | Path]) -> Iterator[str]:
    """Sentences of the given text files, in order, repeated endlessly (gkamradt style).

    Paragraphs (blank-line separated) end with ``"\\n\\n"``, other sentences with ``" "``.
    Raises ``ValueError`` when the files hold no text.
    """
    units: list[str] = []
    for p in paths:
        text = Path(p).read_text(encoding="utf-8", errors="replace")
        for para in re.split(r"\n\s*\n", text):
            sentences = [" ".join(s.split()) for s in _SENTENCE_SPLIT.split(para.strip())]
            sentences = [s for s in sentences if s]
            for i, s in enumerate(sentences):
                units.append(s + ("\n\n" if i == len(sentences) - 1 else " "))
    if not units:
        raise ValueError(f"haystack files hold no text: {list(paths)}")
    while True:
        yield from units


# --------------------------------------------------------------------------------------
# Procedural words for needles
# --------------------------------------------------------------------------------------

KEY_WORDS_A = (
    "abrupt",
    "amber",
    "brisk",
    "calm",
    "crisp",
    "daring",
    "eager",
    "fancy",
    "frosty",
    "gentle",
    "hollow",
    "icy",
    "jolly",
    "keen",
    "lucky",
    "mellow",
    "nimble",
    "odd",
    "plucky",
    "quick",
    "rapid",
    "rustic",
    "shiny",
    "sly",
    "tame",
    "tidy",
    "upbeat",
    "vivid",
    "wary",
    "witty",
    "zesty",
    "bold",
    "dusky",
    "fuzzy",
    "grumpy",
    "hasty",
    "lofty",
    "murky",
    "noble",
    "proud",
)
KEY_WORDS_B = (
    "spark",
    "otter",
    "meadow",
    "anchor",
    "falcon",
    "pebble",
    "comet",
    "harbor",
    "lantern",
    "maple",
    "nugget",
    "orchid",
    "parrot",
    "quartz",
    "raven",
    "saddle",
    "tundra",
    "umbrella",
    "violet",
    "walrus",
    "yarrow",
    "zephyr",
    "badger",
    "cactus",
    "dolphin",
    "ember",
    "fjord",
    "glacier",
    "heron",
    "igloo",
    "jackal",
    "kettle",
    "lemur",
    "mango",
    "nectar",
    "oyster",
)
ARCHIVE_NOUNS = (
    "lighthouse",
    "observatory",
    "monastery",
    "harbour",
    "orchard",
    "foundry",
    "conservatory",
    "railway",
    "glassworks",
    "shipyard",
    "vineyard",
    "tannery",
    "mint",
    "customs house",
    "botanical garden",
    "cathedral",
    "university",
    "museum",
    "naval",
    "mountain",
    "river",
    "northern",
    "coastal",
    "imperial",
    "municipal",
    "parish",
    "college",
    "guild",
)


def random_key(rng: random.Random) -> str:
    """A RULER-style key: two random words joined by a hyphen (``"brisk-falcon"``)."""
    return f"{rng.choice(KEY_WORDS_A)}-{rng.choice(KEY_WORDS_B)}"


def random_code(rng: random.Random, n: int = 6) -> str:
    """``n`` upper-case letters and digits with at least two of each (``"K7Q2ZD"``)."""
    while True:
        code = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))
        if sum(c.isdigit() for c in code) >= 2 and sum(c.isalpha() for c in code) >= 2:
            return code


def random_var(rng: random.Random) -> str:
    """A RULER-style variable name: five random upper-case letters."""
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


# --------------------------------------------------------------------------------------
# Service log
# --------------------------------------------------------------------------------------

SERVICES = (
    "api",
    "auth",
    "billing",
    "storage",
    "search",
    "queue",
    "cache",
    "notifications",
    "scheduler",
    "inventory",
    "analytics",
    "mailer",
    "ingest",
    "reports",
    "media",
    "users",
)


@dataclass(frozen=True)
class Incident:
    """One kind of anomalous log event.

    ``phrase`` is what identifies it (never in a routine line, case-insensitive), ``line`` the
    message template (``{svc}`` and the detail fields), ``question`` names the incident but
    not the service.
    """

    kind: str
    phrase: str
    level: str
    line: str
    question: str


INCIDENTS: tuple[Incident, ...] = (
    Incident(
        "disk_failure",
        "disk failure",
        "ERROR",
        "disk failure on /dev/{dev}: I/O error, device offline",
        "Which service reported the disk failure?",
    ),
    Incident(
        "oom_kill",
        "OOM killer",
        "ERROR",
        "worker pid={pid} killed by the OOM killer (memory limit {mem}Mi exceeded)",
        "Which service had a worker killed by the OOM killer?",
    ),
    Incident(
        "cert_expired",
        "certificate expired",
        "ERROR",
        "TLS handshake with {host} failed: certificate expired",
        "Which service reported an expired TLS certificate?",
    ),
    Incident(
        "replication_lag",
        "replication lag",
        "WARN",
        "replication lag of {lag}s on replica {replica} exceeds the 30s threshold",
        "Which service reported replication lag above its threshold?",
    ),
    Incident(
        "gateway_timeout",
        "payment gateway timeout",
        "ERROR",
        "payment gateway timeout after {ms} ms (txn=txn_{hex})",
        "Which service reported a payment gateway timeout?",
    ),
    Incident(
        "segfault",
        "segmentation fault",
        "FATAL",
        "process {pid} terminated by signal SIGSEGV (segmentation fault)",
        "Which service crashed with a segmentation fault?",
    ),
    Incident(
        "corruption",
        "data corruption",
        "ERROR",
        "checksum mismatch in block {block}: data corruption detected",
        "Which service detected data corruption?",
    ),
    Incident(
        "disk_full",
        "no space left on device",
        "ERROR",
        "write to /var/lib/{svc}/{file} failed: no space left on device",
        "Which service ran out of disk space?",
    ),
    Incident(
        "deadlock",
        "deadlock",
        "ERROR",
        "deadlock detected between transactions tx_{hex} and tx_{hex2}, rolled back",
        "Which service detected a database deadlock?",
    ),
    Incident(
        "pool_exhausted",
        "connection pool exhausted",
        "ERROR",
        "database connection pool exhausted ({mem}/{mem} in use), requests queued",
        "Which service exhausted its database connection pool?",
    ),
    Incident(
        "split_brain",
        "split brain",
        "FATAL",
        "cluster quorum lost: split brain detected between nodes {node} and {node2}",
        "Which service reported a split brain in its cluster?",
    ),
    Incident(
        "dns_failure",
        "DNS resolution failed",
        "ERROR",
        "DNS resolution failed for {host}: SERVFAIL",
        "Which service had DNS resolution failures?",
    ),
)

_HOSTS = (
    "db-primary.internal",
    "payments.partner.example",
    "ldap.corp.example",
    "cdn.example.net",
    "metrics.internal",
    "kafka-2.internal",
    "smtp.relay.example",
    "s3.eu-west.example",
    "vault.internal",
    "search-7.internal",
    "redis-1.internal",
    "api.partner.example",
)
_DEVICES = ("sda", "sdb", "sdc", "sdd", "nvme0n1", "nvme1n1", "xvdf", "vdb")
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH")
_PATHS = (
    "/v1/orders/{n}",
    "/v1/users/{n}",
    "/v1/products/{n}",
    "/v1/cart",
    "/v1/search?q={word}",
    "/v1/sessions",
    "/v2/invoices/{n}",
    "/health",
    "/v1/items/{n}/reviews",
    "/v1/checkout",
    "/v2/accounts/{n}/settings",
    "/v1/uploads",
    "/v1/notifications?unread=true",
)
_STATUS = (200, 200, 200, 200, 200, 200, 201, 204, 304, 400, 401, 404, 429)
_WORDS = ("lamp", "chair", "boots", "tent", "kettle", "socks", "desk", "camera", "bike", "rug")
_JOBS = ("send_email", "resize_image", "sync_account", "rebuild_index", "export_csv", "charge_card", "webhook")
_CRONS = ("nightly-backup", "cleanup-sessions", "rotate-logs", "refresh-rates", "weekly-digest", "reindex-catalog")
_PLANS = ("free", "starter", "pro", "team", "enterprise")
_FIELDS = ("email", "name", "address", "phone", "currency", "quantity", "sku")

# (level, template) per service; fields are filled by _log_fields.
_ROUTINE: dict[str, tuple[tuple[str, str], ...]] = {
    "api": (
        ("INFO", "req={rid} {method} {path} -> {status} in {ms}ms"),
        ("INFO", "req={rid} {method} {path} -> {status} in {ms}ms"),
        ("INFO", "req={rid} {method} {path} -> {status} in {ms}ms"),
        ("DEBUG", "req={rid} client={ip} user_agent=mobile/{ver}"),
        ("WARN", "req={rid} slow request {method} {path} took {slow}ms"),
        ("ERROR", "req={rid} upstream {svc2} returned 503, retrying ({try}/3)"),
    ),
    "auth": (
        ("INFO", "req={rid} login ok user={user} mfa={bool}"),
        ("INFO", "req={rid} token refreshed user={user} ttl=3600s"),
        ("INFO", "session s_{hex} closed after {k}m idle"),
        ("DEBUG", "jwks cache hit kid={hex}"),
        ("WARN", "req={rid} login rejected user={user}: invalid password (attempt {try}/5)"),
        ("INFO", "req={rid} access token expired for user={user}, refresh required"),
    ),
    "billing": (
        ("INFO", "invoice inv_{n} issued account=acct_{n2} amount={amt} {cur}"),
        ("INFO", "charge ch_{hex} captured amount={amt} {cur}"),
        ("INFO", "subscription sub_{hex} renewed plan={plan}"),
        ("WARN", "card declined for account=acct_{n2} reason=insufficient_funds"),
        ("DEBUG", "exchange rates cached for {k} currencies"),
    ),
    "storage": (
        ("INFO", "PUT bucket={bucket} key=obj/{hex} size={size}B in {ms}ms"),
        ("INFO", "GET bucket={bucket} key=obj/{hex} size={size}B in {ms}ms"),
        ("INFO", "compaction finished for shard {k}: {n3} -> {k} files"),
        ("INFO", "disk usage {pct}% on /dev/{dev}"),
        ("DEBUG", "fsync batch of {k} writes took {ms}ms"),
        ("INFO", "replica {replica} in sync, delay {ms}ms"),
    ),
    "search": (
        ("INFO", "query id={rid} terms={k} hits={n3} took={ms}ms"),
        ("INFO", "index refresh on shard {k} took {ms}ms"),
        ("DEBUG", "merged {k} segments on index products_v{k}"),
        ("WARN", "slow query id={rid} took {slow}ms"),
    ),
    "queue": (
        ("INFO", "enqueued job j_{hex} type={job} priority={k}"),
        ("INFO", "job j_{hex} acked by consumer c{k} after {ms}ms"),
        ("DEBUG", "queue depth={n3} consumers={k}"),
        ("WARN", "job j_{hex} redelivered (attempt {k})"),
    ),
    "cache": (
        ("INFO", "hit ratio {pct}% over last 60s keys={n}"),
        ("DEBUG", "evicted {n3} keys (lru)"),
        ("DEBUG", "GET key=session:{hex} hit"),
    ),
    "notifications": (
        ("INFO", "email queued to user={user} template=welcome_v{k}"),
        ("INFO", "push sent device={hex} platform={platform} in {ms}ms"),
        ("WARN", "sms provider throttled, backing off {k}s"),
    ),
    "scheduler": (
        ("INFO", "cron {cron} started run={hex}"),
        ("INFO", "cron {cron} finished run={hex} in {k}s status=ok"),
        ("DEBUG", "next run of {cron} in {n3}s"),
    ),
    "inventory": (
        ("INFO", "stock updated sku=SKU-{n} qty={n3} warehouse=wh{k}"),
        ("INFO", "reservation res_{hex} created for order ord_{n}"),
        ("WARN", "low stock sku=SKU-{n} qty={k}"),
    ),
    "analytics": (
        ("INFO", "batch {hex} of {n3} events flushed in {ms}ms"),
        ("INFO", "hourly rollup completed for partition p{k}"),
    ),
    "mailer": (
        ("INFO", "smtp delivered msg={hex} to {domain} in {ms}ms"),
        ("WARN", "smtp deferred msg={hex}: 421 try again later"),
    ),
    "ingest": (
        ("INFO", "received {n3} records from source={src} lag={ms}ms"),
        ("DEBUG", "checkpoint committed offset={n} partition={k}"),
    ),
    "reports": (
        ("INFO", "report rep_{hex} rendered format={fmt} pages={k} in {ms}ms"),
        ("ERROR", "req={rid} request validation failed: missing field '{field}'"),
    ),
    "media": (
        ("INFO", "thumbnail generated for img_{hex} {w}x{h} in {ms}ms"),
        ("INFO", "transcode job {hex} progress {pct}%"),
    ),
    "users": (
        ("INFO", "profile updated user={user} fields={field}"),
        ("INFO", "req={rid} GET /v1/users/{n} -> 200 in {ms}ms"),
    ),
}
_GENERIC: tuple[tuple[str, str], ...] = (
    ("INFO", "health check ok latency={ms}ms"),
    ("DEBUG", "gc pause {k}ms heap={n3}MB"),
    ("INFO", "config reloaded version={n3}"),
    ("DEBUG", "metrics flushed series={n3}"),
    ("DEBUG", "connection pool stats active={k} idle={k2}"),
    ("WARN", "retrying connection to {svc2} in {ms}ms"),
    ("INFO", "certificate for {host} valid for {n3} more days"),
)
# Busy services log more: relative weights of SERVICES.
_SERVICE_WEIGHTS = (10, 6, 3, 5, 4, 4, 3, 2, 1, 2, 2, 1, 3, 1, 2, 2)


def _hex(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _log_fields(fields: Sequence[str], svc: str, rng: random.Random) -> dict[str, str]:
    v: dict[str, str] = {}
    for f in fields:
        if f in v:
            continue
        if f == "rid":
            v[f] = _hex(rng)
        elif f in ("hex", "hex2"):
            v[f] = _hex(rng, 10)
        elif f == "method":
            v[f] = rng.choice(_METHODS)
        elif f == "path":
            v[f] = rng.choice(_PATHS).format(n=rng.randint(1, 99999), word=rng.choice(_WORDS))
        elif f == "status":
            v[f] = str(rng.choice(_STATUS))
        elif f == "ms":
            v[f] = str(int(rng.expovariate(1 / 40)) + 1)
        elif f == "slow":
            v[f] = str(rng.randint(1500, 9000))
        elif f == "try":
            v[f] = str(rng.randint(1, 3))
        elif f in ("k", "k2"):
            v[f] = str(rng.randint(1, 9))
        elif f in ("n", "n2"):
            v[f] = str(rng.randint(1000, 99999))
        elif f == "n3":
            v[f] = str(rng.randint(10, 999))
        elif f == "ip":
            v[f] = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        elif f == "ver":
            v[f] = f"{rng.randint(1, 9)}.{rng.randint(0, 30)}"
        elif f == "svc2":
            v[f] = rng.choice(SERVICES)
        elif f == "user":
            v[f] = f"u_{rng.randint(1000, 99999)}"
        elif f == "bool":
            v[f] = rng.choice(("true", "false"))
        elif f == "amt":
            v[f] = f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
        elif f == "cur":
            v[f] = rng.choice(("EUR", "USD", "GBP"))
        elif f == "plan":
            v[f] = rng.choice(_PLANS)
        elif f == "bucket":
            v[f] = rng.choice(("uploads", "backups", "avatars", "exports"))
        elif f == "size":
            v[f] = str(rng.randint(200, 9_000_000))
        elif f == "pct":
            v[f] = str(rng.randint(20, 97))
        elif f == "dev":
            v[f] = rng.choice(_DEVICES)
        elif f == "replica":
            v[f] = f"db-{rng.randint(1, 6)}"
        elif f == "job":
            v[f] = rng.choice(_JOBS)
        elif f == "platform":
            v[f] = rng.choice(("ios", "android", "web"))
        elif f == "cron":
            v[f] = rng.choice(_CRONS)
        elif f == "domain":
            v[f] = rng.choice(("example.com", "mail.example.org", "corp.example.net"))
        elif f == "src":
            v[f] = rng.choice(("clickstream", "orders-cdc", "mobile-events", "partner-feed"))
        elif f == "fmt":
            v[f] = rng.choice(("pdf", "csv", "xlsx"))
        elif f == "field":
            v[f] = rng.choice(_FIELDS)
        elif f in ("w", "h"):
            v[f] = str(rng.choice((64, 128, 256, 512, 1024)))
        elif f == "host":
            v[f] = rng.choice(_HOSTS)
        elif f == "pid":
            v[f] = str(rng.randint(300, 65000))
        elif f == "mem":
            v[f] = str(rng.choice((128, 256, 512, 1024, 2048)))
        elif f == "lag":
            v[f] = str(rng.randint(45, 900))
        elif f == "block":
            v[f] = str(rng.randint(10_000, 9_999_999))
        elif f == "file":
            v[f] = f"{rng.choice(('wal', 'data', 'tmp', 'segment'))}-{rng.randint(1, 999):04d}.bin"
        elif f in ("node", "node2"):
            v[f] = f"{svc}-{rng.randint(0, 5)}"
        elif f == "svc":
            v[f] = svc
        else:  # pragma: no cover - a template typo
            raise KeyError(f)
    return v


_PARSED_ROUTINE = {
    svc: tuple((lvl, t, tuple(_FIELD_RE.findall(t))) for lvl, t in templates) for svc, templates in _ROUTINE.items()
}
_PARSED_GENERIC = tuple((lvl, t, tuple(_FIELD_RE.findall(t))) for lvl, t in _GENERIC)

LOG_EPOCH = datetime(2024, 5, 14, 0, 0, 0)
"""Day the synthetic logs start on; the time of day is drawn from the seed."""


def format_log_line(t_ms: int, level: str, service: str, message: str) -> str:
    """``2024-05-14T09:26:53.412Z INFO  [api] message`` (``t_ms`` counted from :data:`LOG_EPOCH`)."""
    ts = (LOG_EPOCH + timedelta(milliseconds=t_ms)).isoformat(timespec="milliseconds")
    return f"{ts}Z {level:<5} [{service}] {message}"


def parse_log_time(line: str) -> int:
    """Milliseconds since :data:`LOG_EPOCH` of a line written by :func:`format_log_line`."""
    ts = datetime.fromisoformat(line[:23])
    return (ts - LOG_EPOCH) // timedelta(milliseconds=1)


def log_units(rng: random.Random) -> Iterator[str]:
    """Endless routine service log, one line (ending in ``"\\n"``) per unit.

    Timestamps rise by at least 2 ms a line (so an injected line fits between two), in
    bursts and lulls; most lines are routine INFO/DEBUG traffic with a few ordinary WARN and
    ERROR lines. No line contains an :data:`INCIDENTS` phrase.
    """
    t = rng.randint(0, 6 * 3600 * 1000)
    services = SERVICES
    weights = _SERVICE_WEIGHTS
    while True:
        t += 2 + int(rng.expovariate(1 / 150))
        svc = rng.choices(services, weights)[0]
        if rng.random() < 0.15:
            level, template, fields = rng.choice(_PARSED_GENERIC)
        else:
            level, template, fields = rng.choice(_PARSED_ROUTINE[svc])
        msg = template.format(**_log_fields(fields, svc, rng))
        yield format_log_line(t, level, svc, msg) + "\n"


def incident_message(incident: Incident, service: str, rng: random.Random) -> str:
    """The message part of an incident line for ``service`` (details drawn from ``rng``)."""
    fields = _FIELD_RE.findall(incident.line)
    return incident.line.format(**_log_fields(fields, service, rng))


# --------------------------------------------------------------------------------------
# Service log with injected incidents (the monitoring benchmark)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectedIncident:
    """One occurrence of an incident in a generated log: the lines (1-based) it wrote.

    ``watched`` incidents are the ones a monitor is asked about (``incident.question``); the
    others are distractors: anomalies nobody asked about.
    """

    incident: Incident
    service: str
    lines: tuple[int, ...]
    watched: bool


@dataclass(frozen=True)
class IncidentLog:
    """A routine service log with incidents injected at known lines."""

    lines: list[str]
    incidents: list[InjectedIncident]

    @property
    def text(self) -> str:
        return "".join(self.lines)

    @property
    def questions(self) -> list[str]:
        """The watched incidents' questions, each once, in order of first occurrence."""
        return list(dict.fromkeys(i.incident.question for i in self.incidents if i.watched))


def incident_log(
    rng: random.Random,
    n_lines: int,
    *,
    watched: int = 6,
    repeats: int = 2,
    distractors: int = 3,
    burst: tuple[int, int] = (1, 3),
    spacing: int = 6,
    start: float = 0.1,
    min_gap: int = 40,
) -> IncidentLog:
    """``n_lines`` routine lines (:func:`log_units`) with incidents injected between them.

    ``watched`` incident kinds (distinct, drawn from :data:`INCIDENTS`) occur ``repeats``
    times each and ``distractors`` other kinds once each. An occurrence is a burst of
    ``burst[0]..burst[1]`` lines of one service, each 1..``spacing`` routine lines after the
    previous one, starting after the first ``start`` fraction of the log; bursts start at
    least ``min_gap`` routine lines apart. An injected line's timestamp is 1 ms after the line
    before it, so timestamps keep rising. Deterministic for a given ``rng`` state.
    """
    if watched + distractors > len(INCIDENTS):
        raise ValueError(f"only {len(INCIDENTS)} incident kinds exist, asked for {watched + distractors}")
    if not 1 <= burst[0] <= burst[1] or spacing < 1 or not 0.0 <= start < 1.0 or repeats < 1:
        raise ValueError("need 1 <= burst[0] <= burst[1], spacing >= 1, 0 <= start < 1 and repeats >= 1")
    units = log_units(random.Random(rng.getrandbits(64)))
    routine = [next(units) for _ in range(n_lines)]
    kinds = rng.sample(INCIDENTS, watched + distractors)
    plan = [(kind, True) for kind in kinds[:watched] for _ in range(repeats)]
    plan += [(kind, False) for kind in kinds[watched:]]
    rng.shuffle(plan)
    lo = int(start * n_lines)
    hi = n_lines - 1 - spacing * (burst[1] - 1)
    gap = max(min_gap, spacing * burst[1] + 1)
    if hi - lo < gap * len(plan):
        raise ValueError(f"{n_lines} lines are too few for {len(plan)} incidents {gap} lines apart")
    # anchors at least `gap` apart: spread len(plan) gaps, then distribute the slack at random
    slack = hi - lo - gap * (len(plan) - 1)
    cuts = sorted(rng.randint(0, slack) for _ in plan)
    anchors = [lo + c + gap * i for i, c in enumerate(cuts)]
    after: dict[int, tuple[int, str, str, str]] = {}  # routine index -> (plan index, level, service, message)
    services: list[str] = []
    for k, ((kind, _), anchor) in enumerate(zip(plan, anchors)):
        service = rng.choice(SERVICES)
        services.append(service)
        pos = anchor
        for _ in range(rng.randint(*burst)):
            after[pos] = (k, kind.level, service, incident_message(kind, service, rng))
            pos += rng.randint(1, spacing)
    out: list[str] = []
    written: list[list[int]] = [[] for _ in plan]
    for i, line in enumerate(routine):
        out.append(line)
        if i in after:
            k, level, service, message = after[i]
            out.append(format_log_line(parse_log_time(line) + 1, level, service, message) + "\n")
            written[k].append(len(out))
    incidents = [
        InjectedIncident(incident=kind, service=service, lines=tuple(lines), watched=is_watched)
        for (kind, is_watched), service, lines in zip(plan, services, written)
    ]
    incidents.sort(key=lambda inc: inc.lines[0])
    return IncidentLog(lines=out, incidents=incidents)
