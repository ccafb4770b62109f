"""Generated container names, `adjective_surname` as dockerd makes them."""

from __future__ import annotations

import secrets

_LEFT = (
    "admiring", "adoring", "affectionate", "agitated", "amazing", "angry", "awesome",
    "beautiful", "blissful", "bold", "boring", "brave", "busy", "charming", "clever",
    "compassionate", "competent", "confident", "cool", "cranky", "crazy", "dazzling",
    "determined", "distracted", "dreamy", "eager", "ecstatic", "elastic", "elated",
    "elegant", "eloquent", "epic", "exciting", "fervent", "festive", "flamboyant",
    "focused", "friendly", "frosty", "funny", "gallant", "gifted", "goofy", "gracious",
    "great", "happy", "hardcore", "heuristic", "hopeful", "hungry", "infallible",
    "inspiring", "intelligent", "interesting", "jolly", "jovial", "keen", "kind",
    "laughing", "loving", "lucid", "magical", "modest", "musing", "mystifying", "naughty",
    "nervous", "nice", "nifty", "nostalgic", "objective", "optimistic", "peaceful",
    "pedantic", "pensive", "practical", "priceless", "quirky", "quizzical", "recursing",
    "relaxed", "reverent", "romantic", "sad", "serene", "sharp", "silly", "sleepy",
    "stoic", "strange", "stupefied", "suspicious", "sweet", "tender", "thirsty",
    "trusting", "unruffled", "upbeat", "vibrant", "vigilant", "vigorous", "wizardly",
    "wonderful", "xenodochial", "youthful", "zealous", "zen",
)  # fmt: skip

_RIGHT = (
    "agnesi", "albattani", "allen", "almeida", "archimedes", "ardinghelli", "aryabhata",
    "austin", "babbage", "banach", "bardeen", "bartik", "bassi", "bell", "benz", "bhabha",
    "blackwell", "bohr", "booth", "borg", "bose", "boyd", "brahmagupta", "brattain",
    "brown", "carson", "cerf", "chandrasekhar", "chatterjee", "clarke", "colden", "cori",
    "curie", "darwin", "davinci", "diffie", "dijkstra", "dirac", "driscoll", "dubinsky",
    "easley", "edison", "einstein", "elion", "engelbart", "euclid", "euler", "faraday",
    "fermat", "fermi", "feynman", "franklin", "gagarin", "galileo", "gates", "gauss",
    "germain", "goldberg", "goldstine", "goldwasser", "goodall", "hamilton", "haslett",
    "hawking", "heisenberg", "hermann", "hodgkin", "hoover", "hopper", "hugle", "hypatia",
    "jackson", "jang", "jennings", "jepsen", "johnson", "joliot", "jones", "kalam",
    "kapitsa", "keldysh", "keller", "kepler", "khorana", "kilby", "kirch", "knuth",
    "kowalevski", "lalande", "lamarr", "lamport", "leakey", "leavitt", "lederberg",
    "lehmann", "lewin", "lichterman", "liskov", "lovelace", "lumiere", "mahavira",
    "margulis", "matsumoto", "maxwell", "mayer", "mccarthy", "mcclintock", "meitner",
    "mendel", "mendeleev", "merkle", "minsky", "mirzakhani", "montalcini", "moore",
    "morse", "murdock", "napier", "nash", "neumann", "newton", "nightingale", "nobel",
    "noether", "northcutt", "noyce", "panini", "pare", "pascal", "pasteur", "payne",
    "perlman", "pike", "poincare", "poitras", "ptolemy", "raman", "ramanujan", "ride",
    "ritchie", "robinson", "roentgen", "rosalind", "rubin", "saha", "sammet", "shamir",
    "shannon", "shaw", "shirley", "shockley", "sinoussi", "snyder", "spence", "stallman",
    "stonebraker", "swanson", "swartz", "swirles", "tesla", "thompson", "torvalds",
    "turing", "varahamihira", "visvesvaraya", "volhard", "wescoff", "wiles", "williams",
    "wilson", "wing", "wozniak", "wright", "yalow", "yonath",
)  # fmt: skip


def generate_name() -> str:
    name = f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
    if name == "boring_wozniak":  # "Steve Wozniak is not boring", as moby says
        return generate_name()
    return name
