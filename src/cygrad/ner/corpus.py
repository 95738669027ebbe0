"""The NER corpus bundled with cygrad, and the generator that writes it.

Written for this project from templates and invented names (no sentence is
taken from any dataset). Its points are the lecture's and the tagger's:

* **Context decides the tag.** Many names are ambiguous: "Jordan", "Georgia",
  "Victoria" are people in some sentences and places in others; a club is
  named after its city ("Lagos beat Hanoi 2-1": two teams, ORG); "Apple" or
  "Shell" are companies or plain nouns. A tagger that sees only the centre
  word cannot do well; a window of words each side can.
* **Names never seen in training.** Most names are made up from syllables,
  and the held-out part draws on names the training part never uses, so its
  F1 on "unseen" entities measures generalisation, not memory.
* **Some windows do not decide.** "X said on Monday ..." fits a person and a
  company alike; for a name the model has not seen, nothing in the window
  tells them apart. So dev F1 stays below 100 and rises over the epochs as
  the model learns the contexts that do decide.

    python -m cygrad.ner.corpus --out DIR   # write the corpus (deterministic)
"""

import os

import numpy as np

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_data")
FILES = {"train": "demo_train.conll", "test": "demo_heldout.conll"}
N_TRAIN, N_TEST = 2000, 600

# names that are people in one sentence and places in another
AMBIG = ["Jordan", "Georgia", "Victoria", "Lincoln", "Chad", "Austin", "Florence", "Sydney",
         "Madison", "Charlotte", "Dallas", "Chester", "Regina", "Eugene", "Adelaide",
         "Paris", "Orlando", "Houston", "Kent", "Darwin", "Hamilton", "Camden", "Aurora"]
FIRST = ["Maria", "Ahmed", "Chen", "Olga", "Kwame", "Ingrid", "Rafael", "Yuki", "Priya",
         "Tomas", "Amara", "Lars", "Fatima", "Diego", "Sofia", "Ivan", "Leila", "Omar",
         "Hana", "Pedro", "Nadia", "Erik", "Grace", "Kofi"]
SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Brennan", "Silva",
            "Kowalski", "Mensah", "Varga", "Castillo", "Petrov", "Nakamura", "Osei", "Duarte"]
PLACES = ["Lagos", "Oslo", "Lima", "Hanoi", "Quito", "Perth", "Tunis", "Riga", "Bergen",
          "Cork", "Accra", "Porto", "Kyoto", "Dakar", "Malmo", "Leeds"]
PLACE_WORDS = ["Valley", "City", "Bay", "Heights", "Springs"]
# company names that are also common words
ORGS = ["Apple", "Shell", "Orange", "Amazon", "Oracle", "Virgin", "Jaguar", "Mercury",
        "Delta", "Pioneer", "Summit", "Atlas"]
ORG_WORDS = ["Corp", "Inc", "Group", "Holdings", "Bank", "Airlines", "Motors"]
CLUB_WORDS = ["United", "Rovers", "Athletic", "Wanderers"]
EVENTS = ["Open", "Cup", "Festival", "Games", "Marathon"]
NATIONALITY = ["Brazilian", "Danish", "Kenyan", "Polish", "Korean", "Chilean", "Dutch",
               "Nigerian", "Swiss", "Peruvian"]
JOBS = ["minister", "coach", "spokeswoman", "chairman", "striker", "mayor", "director",
        "lawyer", "governor", "captain"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBERS = ["3", "12", "40", "7.5", "250", "1,200", "18", "64", "2.4", "900"]
SCORES = ["2-1", "3-0", "1-1", "4-2", "0-0", "2-2"]
YEARS = ["1991", "1996", "2003", "2011", "2019"]

# invented names: each is two or three of these syllables; first names, surnames,
# places and companies draw on the same syllables, so a name's letters do not give
# its type away (only the context does)
SYLLABLES = ["ka", "ve", "lo", "mi", "ra", "to", "nu", "sa", "de", "bri", "mor", "tal",
             "vin", "zel", "han", "dru", "pel", "gor", "ish", "an", "el", "or", "ul",
             "ber", "cas", "fen", "jo", "lum", "ner", "qui", "ros", "tev", "wal", "yar"]
N_COINED = {"first": 90, "surname": 90, "place": 70, "org": 50}
SEEN_SHARE = 0.5        # of each invented pool, the share the training part may use


def _coin(rng, taken):
    while True:
        k = 2 if rng.random() < 0.7 else 3
        name = "".join(rng.choice(SYLLABLES, size=k)).capitalize()
        if len(name) >= 4 and name not in taken:
            taken.add(name)
            return name


def _pools():
    """The invented names, each pool split into the part training may use and the
    part only the held-out sentences use (the same lists on every run)."""
    rng = np.random.default_rng(1234)
    taken = set(AMBIG + FIRST + SURNAMES + PLACES + ORGS)
    pools = {}
    for kind, n in N_COINED.items():
        names = [_coin(rng, taken) for _ in range(n)]
        cut = int(round(SEEN_SHARE * n))
        pools[kind] = (names[:cut], names)
    return pools


class _Writer:
    """Draws one sentence's fillers; ``held_out`` draws invented names from the
    whole pools (names training never uses among them), training from its part."""

    def __init__(self, rng, pools, held_out):
        self.rng = rng
        self.inv = {k: (v[1] if held_out else v[0]) for k, v in pools.items()}

    def pick(self, xs):
        return xs[int(self.rng.integers(len(xs)))]

    def name(self, real, kind, p_ambig=0.0):
        r = self.rng.random()
        if r < p_ambig:
            return self.pick(AMBIG)
        if r < p_ambig + 0.15:
            return self.pick(real)
        return self.pick(self.inv[kind])

    def span(self, name, typ, p_second, second):
        """``name`` as a B-typ token, followed with probability ``p_second`` by the
        word ``second()`` draws, as I-typ."""
        if self.rng.random() < p_second:
            return [(name, "B-" + typ), (second(), "I-" + typ)]
        return [(name, "B-" + typ)]

    def person(self):
        return self.span(self.name(FIRST, "first", p_ambig=0.3), "PER", 0.3,
                         lambda: self.name(SURNAMES, "surname"))

    def surname(self):
        return [(self.name(SURNAMES, "surname"), "B-PER")]

    def place(self):
        return self.span(self.name(PLACES, "place", p_ambig=0.3), "LOC", 0.12,
                         lambda: self.pick(PLACE_WORDS))

    def org(self):
        name = self.pick(ORGS) if self.rng.random() < 0.3 else self.pick(self.inv["org"])
        return self.span(name, "ORG", 0.25, lambda: self.pick(ORG_WORDS))

    def club(self):
        """A team named after its city: ORG (as CoNLL-2003 tags clubs)."""
        return self.span(self.name(PLACES, "place", p_ambig=0.2), "ORG", 0.4,
                         lambda: self.pick(CLUB_WORDS))

    def misc(self):
        if self.rng.random() < 0.5:
            return [(self.pick(NATIONALITY), "B-MISC")]
        city = self.name(PLACES, "place", p_ambig=0.2)
        return [(city, "B-MISC"), (self.pick(EVENTS), "I-MISC")]

    def person_or_org(self):
        return self.person() if self.rng.random() < 0.5 else self.org()

    def anything(self):
        r = self.rng.random()
        return self.person() if r < 0.34 else self.org() if r < 0.67 else self.place()


# one sentence per line; {P} person, {S} surname alone, {L} place, {O} company,
# {C} club, {M} nationality or event, {X} person or company, {Z} person, company
# or place (for these the window does not decide), {D} day, {N} number, {J} job,
# {W} a company name as a plain noun, {R} score, {Y} year; a|b|c is one of a, b, c;
# every other token is tagged O
TEMPLATES = """
{P} said|announced|confirmed on {D} that talks|negotiations|trading would resume|restart .
Heavy|Steady|Freezing rain|snow fell in {L} on {D} .
Shares of {O} rose|fell|jumped|slipped {N} percent .
The {J} , {P} , arrived|landed|stayed in {L} late|early on {D} .
Flights|Trains|Buses from {L} to {L} were cancelled|delayed .
{O} said|reported its profit|revenue fell|rose to {N} million .
According to {P} , the deal|agreement|sale is done|off|close .
She|He bought|sold|found an {W} at the market|shop|fair in {L} .
Mr {S} met|called|thanked officials|bankers|engineers from {O} on {D} .
{M} fans|tourists|workers celebrated|marched|gathered in {L} .
Police in {L} arrested|detained|questioned {N} people|men|suspects .
On {D} , police|soldiers in {L} arrested|detained {N} people|protesters .
{P} scored twice as {C} won .
The road|bridge|railway to {L} was closed|blocked|flooded for {N} days|hours .
Talks|Meetings between {O} and {O} ended|collapsed without a deal|result .
He told {P} about the {M} .
Prices of {W} and tea went up by {N} percent .
{P} , the {J} of {O} , resigned on {D} .
{O} will open|build|close a new office|factory|store in {L} next year|month .
The {M} {J} {P} won the race in {L} .
{X} said on {D} it was happy with the result .
{X} said|added the talks|plans were going well|badly .
A statement from {X} said {N} people had applied .
{P} and {P} will meet in {L} on {D} .
The {J} said {O} had paid {N} million for the land .
Visitors to {L} rose by {N} percent , said {P} .
Officials|Doctors in {L} said {N} people were hurt|injured|rescued .
{P} , who was born|raised|trained in {L} , joined|left|sued {O} in {Y} .
{C} beat|thrashed|edged {C} {R} on {D} .
{C} drew {R} with {C} in {L} .
Talks in {L} between {P} and {O} resumed on {D} .
{P} 's new book on {L} sold {N} copies .
A spokesman|spokeswoman|lawyer for {O} declined|refused to comment .
{P} told reporters|journalists|students in {L} that prices|taxes would rise|fall .
The {M} government said on {D} it would send aid to {L} .
Fans of {C} queued outside the ground in {L} .
{L} 's {J} , {S} , said the {M} was a success .
It rained|snowed|froze in {L} and {L} on {D} .
{P} visited|left|toured the {O} offices|plant|stores in {L} .
Mrs {S} flew to {L} to meet {X} .
{X} won the contract , worth {N} million .
The {M} was held in {L} in {Y} .
Ms {S} of {O} said demand was weak .
{P} ( {C} ) scored in the second half .
The {J} of {L} , {P} , opened the {M} .
{X} and {X} signed the deal in {L} .
{Z} was|appeared in the news|papers again on {D} .
Nobody had heard of {Z} until {Y} .
The report|film|study on {Z} will be published|released|shown on {D} .
{X} has not paid the {N} million it owes .
Critics|Supporters|Friends of {Z} gathered|met on {D} to protest|talk .
{W} prices fell by {N} percent on {D} .
{P} has sold {N} shares of {O} .
Most of {Z} was quiet on {D} , officials said .
""".strip().splitlines()


# the templates whose window does not decide come three times as often: they are
# what keeps held-out F1 informative
_WEIGHTED = [t for t in TEMPLATES for _ in range(3 if "{X}" in t or "{Z}" in t else 1)]


def _sentence(w):
    """One sentence from a template: a list of (token, tag)."""
    fill = {"P": w.person, "S": w.surname, "L": w.place, "O": w.org, "C": w.club,
            "M": w.misc, "X": w.person_or_org, "Z": w.anything}
    words = {"D": DAYS, "N": NUMBERS, "J": JOBS, "R": SCORES, "Y": YEARS}
    out = []
    for tok in w.pick(_WEIGHTED).split():
        if len(tok) == 3 and tok[0] == "{" and tok[2] == "}":
            k = tok[1]
            if k in fill:
                out += fill[k]()
            elif k == "W":      # capitalised at the start of a sentence, still O
                noun = w.pick(ORGS)
                out.append((noun if not out else noun.lower(), "O"))
            else:
                out.append((w.pick(words[k]), "O"))
        elif "|" in tok:
            out.append((w.pick(tok.split("|")), "O"))
        else:
            out.append((tok, "O"))
    return out


def generate(n_sentences, seed, held_out=False):
    w = _Writer(np.random.default_rng(seed), _pools(), held_out)
    return [_sentence(w) for _ in range(n_sentences)]


def write(path, sentences):
    """CoNLL lines; each sentence is a document of its own (the templates' sentences
    are unrelated: a name in one says nothing of the same name in another)."""
    with open(path, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write("-DOCSTART- O\n\n")
            for tok, tag in s:
                f.write(f"{tok} {tag}\n")
            f.write("\n")


def path(split):
    """Path of a bundled split: ``"train"`` or ``"test"`` (the held-out part)."""
    return os.path.join(HERE, FILES[split])


def main(argv=None):
    """``python -m cygrad.ner.corpus --out DIR``: write the corpus's two files into
    DIR (the bundled ones are this generator's output for these seeds)."""
    import argparse
    ap = argparse.ArgumentParser(
        prog="python -m cygrad.ner.corpus",
        description="Write the NER demo corpus bundled with cygrad (deterministic: the "
                    f"bundled {FILES['train']} and {FILES['test']} are this output).")
    ap.add_argument("--out", metavar="DIR", required=True,
                    help="directory to write the two CoNLL files into (created if needed)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    write(os.path.join(a.out, FILES["train"]), generate(N_TRAIN, seed=2024))
    write(os.path.join(a.out, FILES["test"]), generate(N_TEST, seed=7, held_out=True))
    print(f"wrote {FILES['train']} ({N_TRAIN} sentences) and {FILES['test']} ({N_TEST}) "
          f"into {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
