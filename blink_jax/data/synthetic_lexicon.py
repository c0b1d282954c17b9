"""The synthetic worlds' lexicon: roles, attributes, fillers and name parts.

Tables only; `synthetic.py` composes entities, mentions and documents from
them. Changing a table changes generated corpora: bump
`synthetic.GENERATOR_VERSION` with it.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------- lexicon
# Role -> paraphrases used only in contexts. Descriptions say the role word itself.
ROLES: dict[str, dict[str, list[str]]] = {
    "person": {
        "blacksmith": ["forged blades at the anvil", "hammered iron beside a roaring furnace"],
        "healer": ["tended the sick with herbs and poultices", "mended wounds and cured fevers"],
        "sailor": ["crewed trading vessels across the open sea", "spent years before the mast"],
        "scholar": ["studied old scrolls in the archive", "copied manuscripts by candlelight"],
        "hunter": ["tracked deer through the thickets", "set snares and stalked game"],
        "merchant": ["haggled over spices and cloth at the market", "kept ledgers of coin"],
        "knight": ["rode into battle in heavy armour", "fought in tourneys with a lance"],
        "bard": ["sang ballads in crowded taverns", "played the lute and composed verses"],
        "farmer": ["ploughed fields and harvested barley", "sowed wheat on a small homestead"],
        "thief": ["picked locks and cut purses", "crept through windows at night to rob houses"],
        "priest": ["led prayers at the temple altar", "preached sermons to the faithful"],
        "miner": ["dug tunnels deep for ore", "swung a pick in the dark shafts"],
    },
    "place": {
        "river": ["flowed swiftly past the reeds", "flooded its banks every spring"],
        "fortress": ["withstood many sieges behind its ramparts", "had thick walls and a keep"],
        "village": ["was a handful of cottages around a well", "had a green and a mill"],
        "forest": ["was dense with ancient pines", "lay under a dark canopy of firs"],
        "mountain": ["rose high with snowy peaks", "towered above the valleys with cliffs"],
        "harbour": ["sheltered boats at its docks", "had piers where fishing fleets unloaded"],
        "swamp": ["was a foul marsh of mud", "had boggy mires and stagnant pools"],
        "city": ["had crowded streets and many spires", "bustled with thousands of people"],
    },
    "guild": {
        "company": ["ran caravans and counting houses", "financed voyages for profit"],
        "order": ["trained armoured champions sworn to a code", "kept a chapter house"],
        "brotherhood": ["kept a cloister of silent monks", "ran an abbey devoted to fasting"],
        "circle": ["taught spells to young sorcerers", "gathered wizards to study magic"],
        "band": ["fought for pay in other lords' wars", "was a troop of hired soldiers"],
        "syndicate": ["smuggled contraband past the tax collectors", "ran gambling dens"],
    },
    "artifact": {
        "sword": ["had a keen blade that never dulled", "cut through steel in battle"],
        "crown": ["was worn by monarchs at coronations", "sat upon the heads of rulers"],
        "amulet": ["hung on a chain as a charm", "warded off curses as a pendant"],
        "ship": ["sailed the seas under tall masts", "was a vessel with a proud figurehead"],
        "tome": ["held pages of secret writings", "was bound in leather and full of script"],
        "shield": ["deflected blows in many battles", "turned aside arrows and spears"],
    },
    "creature": {
        "dragon": ["breathed fire and hoarded treasure", "scorched villages from the sky"],
        "wolf": ["howled at night and hunted with its pack", "prowled as a fanged beast"],
        "serpent": ["coiled in the deep waters", "slithered through the ruins with venom"],
        "giant": ["hurled boulders at travellers", "strode over hills as a colossal brute"],
        "spirit": ["haunted the halls as a ghost", "drifted unseen as a phantom"],
        "griffin": ["swooped down with beak and talon", "nested on high crags with eagle wings"],
    },
}
# Kinds in proportion 5:2:1:1:1; the guild comes early so any world of three entities has one.
KIND_CYCLE = ("person", "place", "guild", "person", "artifact", "person", "creature", "person",
              "place", "person")
KIND_ATTRS = {
    "person": ("role", "region", "trait", "allegiance", "emblem", "object", "rival"),
    "place": ("role", "region", "allegiance", "emblem"),
    "guild": ("role", "region", "trait", "emblem", "object", "rival"),
    "artifact": ("role", "region", "allegiance", "emblem"),
    "creature": ("role", "region", "trait", "object", "rival"),
}
RIVAL_KINDS = {"person": ("person", "creature"), "guild": ("guild",),
               "creature": ("person", "creature")}
WHERE = {"person": "from", "place": "in", "guild": "based in", "artifact": "kept in",
         "creature": "that dwells in"}
TRAITS = {"brave": ["fearless", "valiant"], "cruel": ["merciless", "ruthless"],
          "wise": ["sage", "learned"], "greedy": ["grasping", "avaricious"],
          "gentle": ["kindly", "tender"], "proud": ["haughty", "arrogant"],
          "cunning": ["sly", "crafty"], "loyal": ["faithful", "steadfast"],
          "reckless": ["rash", "heedless"], "patient": ["unhurried", "calm"]}
COLOURS = {"red": ["crimson", "scarlet"], "blue": ["azure", "cobalt"],
           "green": ["emerald", "verdant"], "black": ["ebony", "jet"],
           "white": ["ivory", "snowy"], "gold": ["golden", "gilded"],
           "silver": ["argent", "silvery"], "grey": ["ashen", "slate"],
           "purple": ["violet", "plum"], "yellow": ["amber", "saffron"]}
EMBLEMS = {"hawk": ["falcon", "kestrel"], "bear": ["grizzly", "bruin"], "oak": ["acorn", "elm"],
           "star": ["comet", "sun"], "rose": ["blossom", "flower"], "tower": ["turret", "spire"],
           "moon": ["crescent", "lunar disc"], "stag": ["hart", "deer"],
           "boar": ["tusked hog", "swine"], "hammer": ["mallet", "maul"]}
OBJECTS = {"lantern": ["lamp", "torch"], "staff": ["walking stick", "rod"],
           "ring": ["signet", "seal"], "horn": ["bugle", "trumpet"],
           "cloak": ["mantle", "cape"], "map": ["chart", "atlas"], "drum": ["tambour", "tabor"],
           "mirror": ["looking glass", "glass"], "bell": ["chime", "gong"],
           "dagger": ["dirk", "knife"]}
EPITHETS = ("Silent", "Tall", "Elder", "Younger", "Lame", "Fair", "Grim", "Swift", "Stout",
            "Blind", "Hooded", "Lucky")
LEADS = ("", "", "Later that year, ", "According to the chronicles, ", "It was said that ",
         "In those days ", "By the next winter, ", "Everyone agreed that ")
FILLERS = (
    "The winter in {region} was long and the roads were closed for weeks.",
    "Few travellers crossed the pass before the thaw.",
    "The harvest that season was poor, and prices rose in every market.",
    "Rumours spread quickly through the inns of {region}.",
    "Nobody remembered exactly when the old bridge had fallen.",
    "A messenger arrived with sealed letters from {region}.",
    "The council met twice that month but decided nothing.",
    "Storms battered the coast for three days and nights.",
    "Children in {region} still repeat the story today.",
    "Some of these accounts were written down only much later.",
    "The festival of lanterns was cancelled that year.",
    "Bandits had been seen on the eastern road.",
    "Many of the chroniclers disagree about what happened next.",
    "The fog over {region} did not lift until noon.",
    "Prices for salt doubled after the flood.",
)
# Descriptions get their own padding: a context filler repeated verbatim in a description
# would match on a dozen words and drown every real clue.
DESC_FILLERS = (
    "Little is recorded of {poss} early years.",
    "Scholars still argue about {poss} origins.",
    "Accounts of {obj} differ from one telling to another.",
    "Several old songs refer to {obj} only indirectly.",
    "Much of what is known comes from a single surviving chronicle.",
    "Some sources confuse {obj} with others of a similar name.",
)
P_CANONICAL = 0.4  # Chance that a context clue reuses the description's own word.
P_DISTRACTOR = 0.3  # Chance that a padding sentence is about another entity, not filler.
MIN_CONTEXT_WORDS, MAX_CONTEXT_WORDS = 20, 60  # Per side of a mention.
STEM_FRACTION = 0.15  # Name stems per entity: lower means more shared surface forms.
# 0.15 makes picking among same-named entities hinge on context (BM25 with a
# mention-weighted query: R@1 ~0.5 on the test worlds; at 0.4 it was 0.68).

# Disjoint consonants per split make train and test names disjoint by construction.
ONSETS = {"train": ("k", "r", "v", "n", "t", "s", "l", "m", "th", "kr", "tr", "st", "h"),
           "test": ("d", "g", "b", "p", "f", "z", "w", "j", "dw", "gw")}
CODAS = {"train": ("n", "r", "l", "s", "k", "th", "m", "rn"),
          "test": ("d", "g", "b", "z", "p", "f")}
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
