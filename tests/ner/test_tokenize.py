"""Raw-text tokenisation to CoNLL-2003 conventions (issue 15): 55 texts written
for it, with the tokens and sentence boundaries CoNLL-2003 would have; and
`cygrad tag` gives the same tokens."""

import io
import sys

import pytest

from cygrad.ner import cli, corpus
from cygrad.ner.data import read_conll, tokenize, tokenize_spans
from cygrad.ner.model import Config
from cygrad.ner.train import TrainConfig, train

CASES = [
    ('EU rejects German call to boycott British lamb.',
     [['EU', 'rejects', 'German', 'call', 'to', 'boycott', 'British', 'lamb', '.']]),
    ('Peter Blackburn said it was "a disaster."',
     [['Peter', 'Blackburn', 'said', 'it', 'was', '"', 'a', 'disaster', '.', '"']]),
    ("Germany's representative to the European Union's veterinary committee Werner Zwingmann said on Wednesday consumers should buy sheepmeat from countries other than Britain.",
     [['Germany', "'s", 'representative', 'to', 'the', 'European', 'Union', "'s", 'veterinary', 'committee', 'Werner', 'Zwingmann', 'said', 'on', 'Wednesday', 'consumers', 'should', 'buy', 'sheepmeat', 'from', 'countries', 'other', 'than', 'Britain', '.']]),
    ("He didn't say why.",
     [['He', 'did', "n't", 'say', 'why', '.']]),
    ("They're expected to arrive at 10:30 on Friday.",
     [['They', "'re", 'expected', 'to', 'arrive', 'at', '10:30', 'on', 'Friday', '.']]),
    ('The U.S. dollar rose against the yen.',
     [['The', 'U.S.', 'dollar', 'rose', 'against', 'the', 'yen', '.']]),
    ('Apple Inc. said profits rose 12.5% to $1,200.50 million.',
     [['Apple', 'Inc.', 'said', 'profits', 'rose', '12.5', '%', 'to', '$', '1,200.50', 'million', '.']]),
    ('Mr. Smith and Dr. Jones met Gen. Lee in Washington.',
     [['Mr.', 'Smith', 'and', 'Dr.', 'Jones', 'met', 'Gen.', 'Lee', 'in', 'Washington', '.']]),
    ('Shares of Acme Corp. fell 3 cents.',
     [['Shares', 'of', 'Acme', 'Corp.', 'fell', '3', 'cents', '.']]),
    ('The Franco-German proposal was rejected.',
     [['The', 'Franco-German', 'proposal', 'was', 'rejected', '.']]),
    ('J. Smith won the race.',
     [['J.', 'Smith', 'won', 'the', 'race', '.']]),
    ('"We will win," he said.',
     [['"', 'We', 'will', 'win', ',', '"', 'he', 'said', '.']]),
    ("It's a long way to Tipperary.",
     [['It', "'s", 'a', 'long', 'way', 'to', 'Tipperary', '.']]),
    ("I'll be back.",
     [['I', "'ll", 'be', 'back', '.']]),
    ("We've seen it all before.",
     [['We', "'ve", 'seen', 'it', 'all', 'before', '.']]),
    ("She'd rather stay in London.",
     [['She', "'d", 'rather', 'stay', 'in', 'London', '.']]),
    ("I'm not sure.",
     [['I', "'m", 'not', 'sure', '.']]),
    ('The talks ended... Nobody knows what happens next.',
     [['The', 'talks', 'ended', '...'], ['Nobody', 'knows', 'what', 'happens', 'next', '.']]),
    ('Results: Chelsea 2 Arsenal 1.',
     [['Results', ':', 'Chelsea', '2', 'Arsenal', '1', '.']]),
    ('The 1996/97 season starts in August.',
     [['The', '1996/97', 'season', 'starts', 'in', 'August', '.']]),
    ('Bonn (Reuters) - The Bundesbank left rates unchanged.',
     [['Bonn', '(', 'Reuters', ')', '-', 'The', 'Bundesbank', 'left', 'rates', 'unchanged', '.']]),
    ('Prices rose 0.3 percent in June, the ministry said.',
     [['Prices', 'rose', '0.3', 'percent', 'in', 'June', ',', 'the', 'ministry', 'said', '.']]),
    ('Is it over? Nobody knows!',
     [['Is', 'it', 'over', '?'], ['Nobody', 'knows', '!']]),
    ('He arrived in the U.K. from Paris.',
     [['He', 'arrived', 'in', 'the', 'U.K.', 'from', 'Paris', '.']]),
    ('Coca-Cola Co. shares were steady.',
     [['Coca-Cola', 'Co.', 'shares', 'were', 'steady', '.']]),
    ("O'Neill scored twice for Ireland.",
     [["O'Neill", 'scored', 'twice', 'for', 'Ireland', '.']]),
    ('The match was played in St. Petersburg on Sunday.',
     [['The', 'match', 'was', 'played', 'in', 'St.', 'Petersburg', 'on', 'Sunday', '.']]),
    ("Boris Yeltsin's heart surgery went well, doctors said.",
     [['Boris', 'Yeltsin', "'s", 'heart', 'surgery', 'went', 'well', ',', 'doctors', 'said', '.']]),
    ('The company, based in New York, employs 4,500 people.',
     [['The', 'company', ',', 'based', 'in', 'New', 'York', ',', 'employs', '4,500', 'people', '.']]),
    ('Washington said talks would resume on Oct. 12.',
     [['Washington', 'said', 'talks', 'would', 'resume', 'on', 'Oct.', '12', '.']]),
    ('The index closed at 5,123.45, down 12.3 points.',
     [['The', 'index', 'closed', 'at', '5,123.45', ',', 'down', '12.3', 'points', '.']]),
    ('"It was a good game," said coach Johan Cruyff.',
     [['"', 'It', 'was', 'a', 'good', 'game', ',', '"', 'said', 'coach', 'Johan', 'Cruyff', '.']]),
    ("The rebels' leader was arrested.",
     [['The', 'rebels', "'", 'leader', 'was', 'arrested', '.']]),
    ('Mrs. Thatcher visited Moscow.',
     [['Mrs.', 'Thatcher', 'visited', 'Moscow', '.']]),
    ('The ship docked at Rotterdam.',
     [['The', 'ship', 'docked', 'at', 'Rotterdam', '.']]),
    ('A 25-year-old man was killed.',
     [['A', '25-year-old', 'man', 'was', 'killed', '.']]),
    ('LONDON 1996-08-30',
     [['LONDON', '1996-08-30']]),
    ('Sampras beat Agassi 6-3 6-4.',
     [['Sampras', 'beat', 'Agassi', '6-3', '6-4', '.']]),
    ('It ended.The next match is on Monday.',
     [['It', 'ended', '.'], ['The', 'next', 'match', 'is', 'on', 'Monday', '.']]),
    ("I'll go.",
     [['I', "'ll", 'go', '.']]),
    ("Prices rose in the U.S. The dollar fell.",
     [['Prices', 'rose', 'in', 'the', 'U.S.'], ['The', 'dollar', 'fell', '.']]),
    ("He works for Apple Inc. It makes phones.",
     [['He', 'works', 'for', 'Apple', 'Inc.'], ['It', 'makes', 'phones', '.']]),
    ("The U.S. President met Mr. Smith in Washington.",
     [['The', 'U.S.', 'President', 'met', 'Mr.', 'Smith', 'in', 'Washington', '.']]),
    ("Sales grew 5% in Jan. The rest of the year was flat.",
     [['Sales', 'grew', '5', '%', 'in', 'Jan.'], ['The', 'rest', 'of', 'the', 'year', 'was', 'flat', '.']]),
    ("Hi. Bye.",
     [['Hi', '.'], ['Bye', '.']]),
    ("It rained. Yes. The end.",
     [['It', 'rained', '.'], ['Yes', '.'], ['The', 'end', '.']]),
    ("Some papers, e.g. The Times, said so.",
     [['Some', 'papers', ',', 'e.g.', 'The', 'Times', ',', 'said', 'so', '.']]),
    ("Arsenal vs. The Rovers ended 2-2.",
     [['Arsenal', 'vs.', 'The', 'Rovers', 'ended', '2-2', '.']]),
    ("Paris Hilton wowed in a sequin gown. Then she left!\n\nU.S. officials didn't.",
     [['Paris', 'Hilton', 'wowed', 'in', 'a', 'sequin', 'gown', '.'], ['Then', 'she', 'left', '!'], ['U.S.', 'officials', 'did', "n't", '.']]),
    # quotes after a sentence end: opening (space before, a word after) or closing
    ('He left. "We won," she said.',
     [['He', 'left', '.'], ['"', 'We', 'won', ',', '"', 'she', 'said', '.']]),
    ('He left. "We won," she said. "Go home." They did.',
     [['He', 'left', '.'], ['"', 'We', 'won', ',', '"', 'she', 'said', '.'], ['"', 'Go', 'home', '.', '"'], ['They', 'did', '.']]),
    ('"Did he win?" she asked.',
     [['"', 'Did', 'he', 'win', '?', '"', 'she', 'asked', '.']]),
    ('It ended 3-1. "Great," said Smith. "Really?" "Yes!" He smiled.',
     [['It', 'ended', '3-1', '.'], ['"', 'Great', ',', '"', 'said', 'Smith', '.'], ['"', 'Really', '?', '"'], ['"', 'Yes', '!', '"'], ['He', 'smiled', '.']]),
    ("Stop! 'No,' he said. He had quoted 'Hamlet.' Nobody laughed.",
     [['Stop', '!'], ["'", 'No', ',', "'", 'he', 'said', '.'], ['He', 'had', 'quoted', "'", 'Hamlet', '.', "'"], ['Nobody', 'laughed', '.']]),
    ('She said: "He told me \'never.\'" Then she left.',
     [['She', 'said', ':', '"', 'He', 'told', 'me', "'", 'never', '.', "'", '"'], ['Then', 'she', 'left', '.']]),
]


@pytest.mark.parametrize("text, sentences", CASES, ids=[c[0][:30] for c in CASES])
def test_conll_conventions(text, sentences):
    assert tokenize(text) == sentences
    for sent in tokenize_spans(text):
        for tok, a, b in sent:
            assert text[a:b] == tok


def test_cygrad_tag_gives_the_same_tokens(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "m")
    train(read_conll(corpus.path("train"))[:50], [], out, Config(hidden=(8,), dim=4),
          TrainConfig(epochs=1), log=lambda *a: None, progress=False)
    text = "\n\n".join(c[0] for c in CASES[:-1])     # one paragraph each
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert cli.main(["tag", "--model", out]) == 0
    blocks = [b for b in capsys.readouterr().out.split("\n\n") if b.strip()]
    got = [[ln.split("\t")[0] for ln in b.splitlines()] for b in blocks]
    assert got == [s for c in CASES[:-1] for s in c[1]]
