"""The small NER corpus bundled with cygrad, and the generator that writes it.

Written for this project from templates (no sentence is taken from any
dataset). Its point is the lecture's: context decides the tag. Most names are
ambiguous -- "Jordan", "Georgia", "Victoria", "Lincoln" are people in some
sentences and places in others, "Apple" or "Shell" are companies or plain
nouns -- so a tagger that sees only the centre word cannot do well, while a
window of two words each side can.

    python -m cygrad.ner.corpus      # rewrite the bundled files (deterministic)
"""

import os

import numpy as np

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_data")
FILES = {"train": "toy_train.conll", "test": "toy_test.conll"}

# names that are both people and places
AMBIG = ["Jordan", "Georgia", "Victoria", "Lincoln", "Chad", "Austin", "Florence", "Sydney",
         "Madison", "Charlotte", "Dallas", "Chester", "Regina", "Eugene", "Adelaide",
         "Paris", "Orlando", "Houston", "Kent", "Darwin", "Hamilton", "Camden", "Aurora"]
PEOPLE = ["Maria", "Ahmed", "Chen", "Olga", "Kwame", "Ingrid", "Rafael", "Yuki", "Priya",
          "Tomas", "Amara", "Lars"]
SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Brennan", "Silva",
            "Kowalski", "Mensah", "Varga", "Castillo"]
PLACES = ["Lagos", "Oslo", "Lima", "Hanoi", "Quito", "Perth", "Tunis", "Riga", "Bergen",
          "Cork"]
REGION_WORDS = ["Valley", "City", "Bay", "Heights"]
# company names that are also common words
ORGS = ["Apple", "Shell", "Orange", "Amazon", "Oracle", "Virgin", "Jaguar", "Mercury",
        "Delta", "Pioneer", "Summit", "Atlas"]
ORG_ONLY = ["Norvex", "Tellura", "Quandis", "Brightmoor"]
ORG_SUFFIX = ["Corp", "Inc", "Group", "Holdings"]
EVENTS = ["Open", "Cup", "Festival", "Games"]
NATIONALITY = ["Brazilian", "Danish", "Kenyan", "Polish", "Korean", "Chilean"]
JOBS = ["minister", "coach", "spokeswoman", "chairman", "striker", "mayor", "director"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
NUMBERS = ["3", "12", "40", "7.5", "250", "1,200"]


def _person(rng):
    """A person's name: ambiguous first names often, sometimes with a surname."""
    first = rng.choice(AMBIG) if rng.random() < 0.6 else rng.choice(PEOPLE)
    if rng.random() < 0.4:
        return [(first, "B-PER"), (rng.choice(SURNAMES), "I-PER")]
    return [(first, "B-PER")]


def _place(rng):
    name = rng.choice(AMBIG) if rng.random() < 0.6 else rng.choice(PLACES)
    if rng.random() < 0.15:
        return [(name, "B-LOC"), (rng.choice(REGION_WORDS), "I-LOC")]
    return [(name, "B-LOC")]


def _org(rng):
    name = rng.choice(ORGS) if rng.random() < 0.7 else rng.choice(ORG_ONLY)
    if rng.random() < 0.3:
        return [(name, "B-ORG"), (rng.choice(ORG_SUFFIX), "I-ORG")]
    return [(name, "B-ORG")]


def _misc(rng):
    if rng.random() < 0.5:
        return [(rng.choice(NATIONALITY), "B-MISC")]
    return [(rng.choice(AMBIG + PLACES), "B-MISC"), (rng.choice(EVENTS), "I-MISC")]


def _o(*words):
    return [(w, "O") for w in words]


def _sentence(rng):
    """One sentence from a template; lists of (token, tag)."""
    P, L, G, M = _person(rng), _place(rng), _org(rng), _misc(rng)
    day, job, num = rng.choice(DAYS), rng.choice(JOBS), rng.choice(NUMBERS)
    word = [w for w, _ in _org(rng)][0].lower()   # the company name as a plain noun
    t = int(rng.integers(0, 16))
    if t == 0:
        return P + _o("said", "on", day, "that", "talks", "would", "resume", ".")
    if t == 1:
        return _o("Heavy", "rain", "fell", "in") + L + _o("on", day, ".")
    if t == 2:
        return _o("Shares", "of") + G + _o("rose", num, "percent", ".")
    if t == 3:
        return _o("The", job, ",") + P + _o(",", "arrived", "in") + L + _o("late", ".")
    if t == 4:
        return _o("Flights", "from") + L + _o("to") + _place(rng) + _o("were", "cancelled", ".")
    if t == 5:
        return G + _o("said", "its", "profit", "fell", "to", num, "million", ".")
    if t == 6:
        return _o("According", "to") + P + _o(",", "the", "deal", "is", "done", ".")
    if t == 7:
        return _o("She", "bought", "an", word, "at", "the", "market", "in") + L + _o(".")
    if t == 8:
        return _o("Mr") + P + _o("met", "officials", "from") + G + _o("on", day, ".")
    if t == 9:
        return M + _o("fans", "celebrated", "in") + L + _o(".")
    if t == 10:
        return _o("Police", "in") + L + _o("arrested", num, "people", ".")
    if t == 11:
        return P + _o("scored", "twice", "as") + _org(rng) + _o("won", ".")
    if t == 12:
        return _o("The", "road", "to") + L + _o("was", "closed", "for", num, "days", ".")
    if t == 13:
        return _o("Talks", "between") + G + _o("and") + _org(rng) + _o("ended", ".")
    if t == 14:
        return _o("He", "told") + P + _o("about", "the") + M + _o(".")
    return _o("Prices", "of", word, "and", "tea", "went", "up", "by", num, "percent", ".")


def generate(n_sentences, seed):
    rng = np.random.default_rng(seed)
    return [_sentence(rng) for _ in range(n_sentences)]


def write(path, sentences):
    with open(path, "w", encoding="utf-8") as f:
        for s in sentences:
            for tok, tag in s:
                f.write(f"{tok} {tag}\n")
            f.write("\n")


def path(split):
    """Path of a bundled split: ``"train"`` or ``"test"`` (the held-out part)."""
    return os.path.join(HERE, FILES[split])


def main():
    os.makedirs(HERE, exist_ok=True)
    write(path("train"), generate(3000, seed=2024))
    write(path("test"), generate(600, seed=7))


if __name__ == "__main__":
    main()
