"""Raw text into sentences of tokens, by CoNLL-2003's conventions (what ``cygrad tag``
reads when its input is not tokenized): clitics split off, dotted abbreviations and
initials kept whole, numbers with their separators, quotes opening or closing by what
follows them, a new sentence after . ! ? and at blank lines."""

import re

# CoNLL-2003's conventions: clitics split off ("Germany 's", "do n't"), dotted
# abbreviations and initials kept whole ("U.S.", "Inc.", "Mr.", "J."), numbers with
# their separators ("1,200.50"), hyphenated words whole, "..." one token, every
# other punctuation mark on its own
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof gen sen rep gov lt col capt sgt st mt jr sr inc ltd corp co bros "
    "plc vs etc jan feb mar apr jun jul aug sep sept oct nov dec fig approx dept "
    "est univ ave blvd rd".split())
_TOKEN = re.compile(r"""
      (?:[^\W\d_]\.){2,}                      # U.S.  U.K.  e.g.
    | [^\W\d_]+\.(?=\s|$|[,;:)"'])(?<=\w\.)   # a word and its dot: kept if an abbreviation
    | \d+(?:[.,:/]\d+)*(?:-\w+)*               # 1,200.50  12:30  1996-08-30  6-3  25-year-old
    | [^\W\d_]'(?=[A-Z])\w{2,}(?:[-&]\w+)*      # O'Neill  D'Alema (no clitic)
    | n't(?=\W|$)                             # do n't
    | '(?:s|re|ve|ll|d|m|S|RE|VE|LL|D|M)(?=\W|$)   # Germany 's
    | \w+?(?=n't(?:\W|$))                     # the "do" of "don't"
    | \w+(?:[-&]\w+)*                          # words, hyphenated ones whole
    | \.\.\.
    | \S                                      # any other mark
""", re.UNICODE | re.VERBOSE)
_CLOSERS = frozenset(['"', "'", ")", "]", "''"])
_QUOTES = frozenset(['"', "'", "''"])
# titles stand before a name, and these stand inside a sentence: never its end
_NO_END = frozenset("mr mrs ms dr prof gen sen rep gov lt col capt sgt st mt "
                    "eg ie vs cf approx fig".split())
# after another abbreviation ("U.S.", "Inc.", "etc."), one of these capitalised
# closed-class words starts a new sentence; a name or any other word does not
# ("the U.S. The ..." ends, "the U.S. President" runs on)
_STARTERS = frozenset(
    "The A An He She It They We I You This That These Those There Then But And Or So Yet "
    "In On At For By With From After Before When While If As Its His Her Their Our My "
    "No Not Some Most Many All Both Each Such What Who Why How Where However Meanwhile "
    "Also Still Earlier Later Last Next".split())


_PARAGRAPH = re.compile(r"\n\s*\n")


def tokenize_spans(text):
    """:func:`tokenize` with character offsets: sentences of (token, start, end),
    ``text[start:end] == token``."""
    sentences, pos = [], 0
    bounds = [m.span() for m in _PARAGRAPH.finditer(text)] + [(len(text), len(text))]
    for brk_start, brk_end in bounds:
        cur, ending, abbrev, quoted = [], False, False, False
        for m in _TOKEN.finditer(text, pos, brk_start):
            tok, a, b = m.group(), m.start(), m.end()
            pieces = [(tok, a, b)]
            if tok.endswith(".") and len(tok) > 1 and tok[:-1].isalpha() \
                    and tok[:-1].lower() not in ABBREVIATIONS and len(tok) > 2:
                # a word and a full stop, not an abbreviation: two tokens
                pieces = [(tok[:-1], a, b - 1), (".", b - 1, b)]
            for tok, a, b in pieces:
                if abbrev and tok in _STARTERS:
                    ending = True
                abbrev = False
                if ending:
                    if tok in _QUOTES and cur and a > cur[-1][2] and b < brk_start \
                            and not text[b].isspace():
                        # a quote after a space and before a word opens the next
                        # sentence ('He left. "We won," ...'); one against the end
                        # mark closes this one ('... won."')
                        pass
                    elif tok in _CLOSERS:
                        quoted = tok in _QUOTES
                        cur.append((tok, a, b))
                        continue
                    if quoted and tok[:1].islower():
                        # '"Stop!" he said.': the quoted sentence runs on
                        ending = quoted = False
                    else:
                        sentences.append(cur)
                        cur, ending, quoted = [], False, False
                cur.append((tok, a, b))
                if tok in (".", "!", "?", "..."):
                    ending = True
                elif len(tok) > 1 and tok.endswith(".") \
                        and tok.replace(".", "").lower() not in _NO_END:
                    abbrev = True       # "U.S.", "Inc.": a sentence may end here
        if cur:
            sentences.append(cur)
        pos = brk_end
    return sentences


def tokenize(text):
    """Split raw text into sentences of tokens: abbreviations like U.S., words (with
    inner - ' .) and single punctuation marks; a new sentence after . ! ? and at
    blank lines."""
    return [[t for t, _, _ in sent] for sent in tokenize_spans(text)]
