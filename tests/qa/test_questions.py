"""Generated questions and the parser (no torch, no database)."""

from __future__ import annotations

import random
from collections import Counter

from mmsearch.training.qa import questions as Q

VOCAB = Q.Vocabulary({"colour": {"Red": 5, "Navy Blue": 3, "Blue": 4, "Green": 1},
                      "article_type": {"Shirts": 4, "Casual Shoes": 2, "Watches": 3},
                      "gender": {"Men": 6, "Women": 5}})


class P:
    def __init__(self, **attributes):
        self.attributes = attributes


def test_answers_are_yes_no_then_every_value_once():
    assert VOCAB.answers[:2] == ["yes", "no"] and len(VOCAB.answers) == len(set(VOCAB.answers)) == 2 + 4 + 3 + 2
    assert VOCAB.majority("colour") == "Red"
    fit = Q.Vocabulary.fit([P(colour="Red"), P(colour="Blue"), P(colour="Red", usage="Casual")], ["colour", "usage"])
    assert fit.values == {"colour": ["Blue", "Red"]}  # usage has one value: nothing to tell apart


def test_generated_questions_cover_every_type_and_balance_yes_no():
    rng = random.Random(0)
    product = P(colour="Navy Blue", article_type="Shirts", gender="Women")
    qas = [qa for _ in range(300) for qa in Q.generate(product, VOCAB, rng)]
    types = Counter(qa.type for qa in qas)
    assert set(types) == {"colour", "article_type", "gender", "yes_no", "choice"}
    answers = Counter(qa.answer for qa in qas if qa.type == Q.YES_NO)
    assert answers["yes"] == answers["no"] == 300
    for qa in qas:
        if qa.type == Q.CHOICE:
            assert qa.answer in qa.options and len(set(qa.options)) == 2
            assert all(o in VOCAB.values[qa.key] for o in qa.options)
    assert len({qa.question for qa in qas if qa.type == "colour"}) >= 5  # many phrasings per type
    # the same (rng seed) gives the same questions
    assert Q.generate(product, VOCAB, random.Random(7)) == Q.generate(product, VOCAB, random.Random(7))


def test_the_parser_reads_the_form_and_the_values():
    parser = Q.QuestionParser(VOCAB)
    assert parser.parse("Is it navy blue?") == Q.Parsed("yes_no", "colour", ("Navy Blue",), ("yes", "no"))
    assert parser.parse("is it blue?").values == ("Blue",)  # whole words, the longest name first
    choice = parser.parse("is this red or navy blue?")
    assert (choice.type, choice.key, set(choice.candidates)) == ("choice", "colour", {"Red", "Navy Blue"})
    assert parser.parse("a shirt or a watch?").candidates == ("Shirts", "Watches")  # singular forms
    assert parser.parse("is it for women?").key == "gender"
    assert parser.parse("what colour is it?", routed_key="colour").candidates == tuple(VOCAB.values["colour"])
    assert parser.parse("how much is it?") == Q.Parsed(None, None, (), ())
    assert Q.truth_of(parser.parse("is it red?"), "Red") == "yes"
    assert Q.truth_of(parser.parse("is it red?"), "Blue") == "no"
    assert Q.truth_of(choice, "Green") is None
