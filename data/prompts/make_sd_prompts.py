#!/usr/bin/env python3
"""Deterministically write the Stable Diffusion prompt files for the DDPO study.

Run from the repository root (or anywhere; paths are relative to this file)::

    python3 data/prompts/make_sd_prompts.py

Outputs, next to this script:

* ``sd_animals_30.txt``  -- exactly 30 simple animal names: the first 30
  entries of ``SIMPLE_ANIMALS`` below, in the order they are written there.
* ``sd_animals_400.txt`` -- every distinct name of ``IMAGENET_ANIMALS`` plus
  the names of ``SIMPLE_ANIMALS`` not already among them, sorted (Python's
  stable ``sorted``, plain code-point order of the lower-case names).

Sources of the lists (both typed in by hand for this project; nothing is
downloaded or read from any other file):

* ``SIMPLE_ANIMALS`` -- a short list of everyday animal names written in the
  spirit of the simple-animal list used by TRL's DDPO example. It is our own
  list, not a copy of TRL's.
* ``IMAGENET_ANIMALS`` -- our own transcription of the ImageNet-1k (ILSVRC-2012)
  animal classes, class indices 0 ("tench") to 397 ("puffer"), one common name
  per class, lower-case, in class-index order. Where a class has several
  synonyms we keep the first (canonical) one, with one made more explicit
  ("hammerhead shark" for class 4, "hammerhead"). Like DDPO's own ImageNet prompt list,
  some names are ambiguous as words ("kite", "monarch", "admiral", "drake");
  they are kept as written because they are the class names.

Prompts are bare names, with no template around them, as in the
``simple_animals`` / ``imagenet_animals`` prompt functions of the original
DDPO code. Each output file has one prompt per line, with no blank lines and
no comments: the loader treats every line as a prompt.

Only the Python standard library is used, and the output is byte-for-byte
deterministic.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
N_SMALL = 30
MIN_LARGE = 300

# (a) Simple, common animal names (45). The first N_SMALL, in this order,
# make up sd_animals_30.txt; do not reorder without meaning to change it.
SIMPLE_ANIMALS: list[str] = [
    "cat", "dog", "horse", "monkey", "rabbit",
    "zebra", "spider", "bird", "sheep", "deer",
    "cow", "goat", "lion", "tiger", "bear",
    "raccoon", "fox", "wolf", "lizard", "beetle",
    "ant", "butterfly", "fish", "shark", "whale",
    "dolphin", "squirrel", "mouse", "rat", "snake",
    # --- names below are not in sd_animals_30.txt ---
    "turtle", "frog", "chicken", "duck", "goose",
    "bee", "pig", "turkey", "fly", "llama",
    "camel", "bat", "gorilla", "hedgehog", "kangaroo",
]

# (b) ImageNet-1k animal classes 0..397, one name per class, in index order.
# The comment on each line gives the index of its first name.
IMAGENET_ANIMALS: list[str] = [
    # fish, birds
    "tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark",  # 0
    "electric ray", "stingray", "cock", "hen", "ostrich",  # 5
    "brambling", "goldfinch", "house finch", "junco", "indigo bunting",  # 10
    "robin", "bulbul", "jay", "magpie", "chickadee",  # 15
    "water ouzel", "kite", "bald eagle", "vulture", "great grey owl",  # 20
    # amphibians, reptiles
    "european fire salamander", "common newt", "eft", "spotted salamander", "axolotl",  # 25
    "bullfrog", "tree frog", "tailed frog", "loggerhead", "leatherback turtle",  # 30
    "mud turtle", "terrapin", "box turtle", "banded gecko", "common iguana",  # 35
    "american chameleon", "whiptail", "agama", "frilled lizard", "alligator lizard",  # 40
    "gila monster", "green lizard", "african chameleon", "komodo dragon", "african crocodile",  # 45
    "american alligator", "triceratops", "thunder snake", "ringneck snake", "hognose snake",  # 50
    "green snake", "king snake", "garter snake", "water snake", "vine snake",  # 55
    "night snake", "boa constrictor", "rock python", "indian cobra", "green mamba",  # 60
    "sea snake", "horned viper", "diamondback", "sidewinder", "trilobite",  # 65
    # arachnids, centipede
    "harvestman", "scorpion", "black and gold garden spider", "barn spider", "garden spider",  # 70
    "black widow", "tarantula", "wolf spider", "tick", "centipede",  # 75
    # birds
    "black grouse", "ptarmigan", "ruffed grouse", "prairie chicken", "peacock",  # 80
    "quail", "partridge", "african grey", "macaw", "sulphur-crested cockatoo",  # 85
    "lorikeet", "coucal", "bee eater", "hornbill", "hummingbird",  # 90
    "jacamar", "toucan", "drake", "red-breasted merganser", "goose",  # 95
    "black swan",  # 100
    # mammals (tusker, monotremes, marsupials)
    "tusker", "echidna", "platypus", "wallaby",  # 101
    "koala", "wombat",  # 105
    # invertebrates
    "jellyfish", "sea anemone", "brain coral",  # 107
    "flatworm", "nematode", "conch", "snail", "slug",  # 110
    "sea slug", "chiton", "chambered nautilus", "dungeness crab", "rock crab",  # 115
    "fiddler crab", "king crab", "american lobster", "spiny lobster", "crayfish",  # 120
    "hermit crab", "isopod",  # 125
    # water birds
    "white stork", "black stork", "spoonbill",  # 127
    "flamingo", "little blue heron", "american egret", "bittern", "crane",  # 130
    "limpkin", "european gallinule", "american coot", "bustard", "ruddy turnstone",  # 135
    "red-backed sandpiper", "redshank", "dowitcher", "oystercatcher", "pelican",  # 140
    "king penguin", "albatross",  # 145
    # marine mammals
    "grey whale", "killer whale", "dugong",  # 147
    "sea lion",  # 150
    # dogs
    "chihuahua", "japanese spaniel", "maltese dog", "pekinese",  # 151
    "shih-tzu", "blenheim spaniel", "papillon", "toy terrier", "rhodesian ridgeback",  # 155
    "afghan hound", "basset", "beagle", "bloodhound", "bluetick",  # 160
    "black-and-tan coonhound", "walker hound", "english foxhound", "redbone", "borzoi",  # 165
    "irish wolfhound", "italian greyhound", "whippet", "ibizan hound", "norwegian elkhound",  # 170
    "otterhound", "saluki", "scottish deerhound", "weimaraner", "staffordshire bullterrier",  # 175
    "american staffordshire terrier", "bedlington terrier", "border terrier", "kerry blue terrier", "irish terrier",  # 180
    "norfolk terrier", "norwich terrier", "yorkshire terrier", "wire-haired fox terrier", "lakeland terrier",  # 185
    "sealyham terrier", "airedale", "cairn", "australian terrier", "dandie dinmont",  # 190
    "boston bull", "miniature schnauzer", "giant schnauzer", "standard schnauzer", "scotch terrier",  # 195
    "tibetan terrier", "silky terrier", "soft-coated wheaten terrier", "west highland white terrier", "lhasa",  # 200
    "flat-coated retriever", "curly-coated retriever", "golden retriever", "labrador retriever", "chesapeake bay retriever",  # 205
    "german short-haired pointer", "vizsla", "english setter", "irish setter", "gordon setter",  # 210
    "brittany spaniel", "clumber", "english springer", "welsh springer spaniel", "cocker spaniel",  # 215
    "sussex spaniel", "irish water spaniel", "kuvasz", "schipperke", "groenendael",  # 220
    "malinois", "briard", "kelpie", "komondor", "old english sheepdog",  # 225
    "shetland sheepdog", "collie", "border collie", "bouvier des flandres", "rottweiler",  # 230
    "german shepherd", "doberman", "miniature pinscher", "greater swiss mountain dog", "bernese mountain dog",  # 235
    "appenzeller", "entlebucher", "boxer", "bull mastiff", "tibetan mastiff",  # 240
    "french bulldog", "great dane", "saint bernard", "eskimo dog", "malamute",  # 245
    "siberian husky", "dalmatian", "affenpinscher", "basenji", "pug",  # 250
    "leonberg", "newfoundland", "great pyrenees", "samoyed", "pomeranian",  # 255
    "chow", "keeshond", "brabancon griffon", "pembroke", "cardigan",  # 260
    "toy poodle", "miniature poodle", "standard poodle", "mexican hairless",  # 265
    # wild canids
    "timber wolf",  # 269
    "white wolf", "red wolf", "coyote", "dingo", "dhole",  # 270
    "african hunting dog", "hyena", "red fox", "kit fox", "arctic fox",  # 275
    "grey fox",  # 280
    # cats
    "tabby", "tiger cat", "persian cat", "siamese cat",  # 281
    "egyptian cat", "cougar", "lynx", "leopard", "snow leopard",  # 285
    "jaguar", "lion", "tiger", "cheetah",  # 290
    # bears, small carnivores
    "brown bear",  # 294
    "american black bear", "ice bear", "sloth bear", "mongoose", "meerkat",  # 295
    # insects
    "tiger beetle", "ladybug", "ground beetle", "long-horned beetle", "leaf beetle",  # 300
    "dung beetle", "rhinoceros beetle", "weevil", "fly", "bee",  # 305
    "ant", "grasshopper", "cricket", "walking stick", "cockroach",  # 310
    "mantis", "cicada", "leafhopper", "lacewing", "dragonfly",  # 315
    "damselfly", "admiral", "ringlet", "monarch", "cabbage butterfly",  # 320
    "sulphur butterfly", "lycaenid",  # 325
    # echinoderms
    "starfish", "sea urchin", "sea cucumber",  # 327
    # mammals
    "wood rabbit", "hare", "angora", "hamster", "porcupine",  # 330
    "fox squirrel", "marmot", "beaver", "guinea pig", "sorrel",  # 335
    "zebra", "hog", "wild boar", "warthog", "hippopotamus",  # 340
    "ox", "water buffalo", "bison", "ram", "bighorn",  # 345
    "ibex", "hartebeest", "impala", "gazelle", "arabian camel",  # 350
    "llama", "weasel", "mink", "polecat", "black-footed ferret",  # 355
    "otter", "skunk", "badger", "armadillo", "three-toed sloth",  # 360
    # primates
    "orangutan", "gorilla", "chimpanzee", "gibbon",  # 365
    "siamang", "guenon", "patas", "baboon", "macaque",  # 369
    "langur", "colobus", "proboscis monkey", "marmoset", "capuchin",  # 374
    "howler monkey", "titi", "spider monkey", "squirrel monkey", "madagascar cat",  # 379
    "indri",  # 384
    # elephants, pandas
    "indian elephant", "african elephant", "lesser panda", "giant panda",  # 385
    # fish
    "barracouta",  # 389
    "eel", "coho", "rock beauty", "anemone fish", "sturgeon",  # 390
    "gar", "lionfish", "puffer",  # 395
]

N_IMAGENET_ANIMAL_CLASSES = 398  # indices 0..397


def _clean(name: str) -> str:
    """Normalise one name: lower-case, single spaces, no surrounding blanks."""
    return " ".join(name.lower().split())


def _dedupe(names: list[str]) -> list[str]:
    """Drop repeats, keeping the first occurrence (order-preserving)."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in names:
        name = _clean(raw)
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def small_set() -> list[str]:
    names = _dedupe(SIMPLE_ANIMALS)
    assert len(names) >= N_SMALL, len(names)
    return names[:N_SMALL]


def large_set() -> list[str]:
    imagenet = _dedupe(IMAGENET_ANIMALS)
    present = set(imagenet)
    extra = [n for n in _dedupe(SIMPLE_ANIMALS) if n not in present]
    names = sorted(imagenet + extra)
    assert len(names) >= MIN_LARGE, len(names)
    return names


def _write(path: Path, names: list[str]) -> None:
    for n in names:
        # Every line is read back as a prompt: keep them plain.
        assert n and "\n" not in n and not n.startswith("#"), repr(n)
    path.write_text("".join(n + "\n" for n in names), encoding="utf-8")


def main() -> None:
    assert len(IMAGENET_ANIMALS) == N_IMAGENET_ANIMAL_CLASSES, len(IMAGENET_ANIMALS)
    assert IMAGENET_ANIMALS[0] == "tench" and IMAGENET_ANIMALS[-1] == "puffer"
    small, large = small_set(), large_set()
    _write(HERE / "sd_animals_30.txt", small)
    _write(HERE / "sd_animals_400.txt", large)
    print(f"sd_animals_30.txt: {len(small)} prompts")
    print(f"sd_animals_400.txt: {len(large)} prompts "
          f"({len(_dedupe(IMAGENET_ANIMALS))} ImageNet names)")


if __name__ == "__main__":
    main()
