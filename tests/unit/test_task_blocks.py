"""Downstream-task building blocks without Ray: NER, SQuAD, NSP and seq2seq readers, sub-token
labels, doc-stride windows, answer post-processing and the task metrics, on hand-worked examples."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from raylm.datasets.sources import BadRowError
from raylm.errors import UserError
from raylm.tasks.conll import (
    IGNORE,
    align_labels,
    label_list,
    merge_word_predictions,
    plain_tokenizer,
    read_conll,
    read_ner,
    read_token_jsonl,
    to_iob2,
    tokenize_ner_batch,
    word_windows,
)
from raylm.tasks.metrics import bleu, entity_scores, normalize_answer, rouge, squad_scores
from raylm.tasks.nsp_pairs import IS_NEXT, IS_RANDOM, nsp_examples, pack_pair
from raylm.tasks.parallel_text import read_parallel, read_seq2seq, read_seq2seq_jsonl
from raylm.tasks.squad import (
    CLS_INDEX,
    answer_tokens,
    best_answers,
    qa_features,
    read_squad,
    span_windows,
    tokenize_qa_batch,
)

WORDS = ("the cat sat on mat new york where is play ##er ##s alpha beta gamma delta epsilon zeta eta theta iota "
         "kappa what ?").split()


@pytest.fixture(scope="module")
def tok():
    """A BERT-style WordPiece tokenizer over a tiny vocabulary (nothing comes from a hub)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    t = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return t


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- CoNLL / NER


def test_iob1_becomes_iob2_and_iob2_is_kept():
    # CoNLL-2003 (IOB1): I- opens an entity; B- only splits two adjacent entities of one type.
    assert to_iob2("I-PER I-PER O I-LOC B-LOC I-ORG I-PER".split()) == \
        "B-PER I-PER O B-LOC B-LOC B-ORG B-PER".split()
    iob2 = "B-PER I-PER O B-LOC B-LOC I-LOC".split()
    assert to_iob2(iob2) == iob2
    with pytest.raises(ValueError, match="S-PER"):
        to_iob2(["O", "S-PER"])
    assert label_list([["B-PER", "O"], ["B-LOC", "I-LOC"]]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


CONLL = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- O O
BRUSSELS NNP I-NP I-LOC
"""


def test_read_conll_sentences_boundaries_and_tag_column(tmp_path):
    path = write(tmp_path / "eng.train", CONLL)
    rows = list(read_conll(path))
    assert [r["tokens"] for r in rows] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [r["tags"] for r in rows] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [r["row_id"] for r in rows] == [f"{path}:3", f"{path}:7", f"{path}:10"]
    assert all(r["reject"] == "" for r in rows)
    chunks = list(read_conll(path, tag_column=2))  # the chunk column, IOB1 too
    assert chunks[0]["tags"] == ["B-NP", "B-VP", "B-NP"]
    assert [r["tokens"] for r in read_ner(path)] == [r["tokens"] for r in rows]


def test_read_conll_bad_columns_and_tags_name_file_and_line(tmp_path):
    path = write(tmp_path / "bad.conll", "EU NNP I-NP I-ORG\nrejects VBZ O\n\nPeter NNP I-NP PER\n\nok X O O\n")
    with pytest.raises(BadRowError, match=rf"^{path}:2: expected 4 columns .* got 3"):
        list(read_conll(path))
    rows = list(read_conll(path, on_error="skip"))
    assert [(r["row_id"], r["reject"]) for r in rows] == [
        (f"{path}:2", "wrong_columns"), (f"{path}:4", "bad_tag"), (f"{path}:6", "")]
    assert rows[0]["tokens"] == [] and rows[2]["tokens"] == ["ok"]
    tags = write(tmp_path / "tags.conll", "EU NNP I-NP I-ORG\n\nPeter NNP I-NP I-PER\nBlackburn NNP I-NP PER\n")
    with pytest.raises(BadRowError, match=rf"^{tags}:4: tag 'PER' is not O, B-TYPE or I-TYPE"):
        list(read_conll(tags))
    with pytest.raises(BadRowError, match=rf"^{tags}:1: tag column 7 out of range"):
        list(read_conll(tags, tag_column=7))


def test_read_token_jsonl_good_and_bad_rows(tmp_path):
    lines = [{"tokens": ["New", "York"], "tags": ["I-LOC", "I-LOC"]}, {"tokens": ["a"], "tags": []},
             {"tokens": ["b"]}, "{not json", {"tokens": ["c"], "tags": ["E-PER"]}]
    path = write(tmp_path / "ner.jsonl", "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    rows = list(read_ner(path, on_error="skip"))
    assert rows[0]["tags"] == ["B-LOC", "I-LOC"] and rows[0]["row_id"] == f"{path}:1"
    assert [r["reject"] for r in rows] == ["", "wrong_columns", "missing_field", "malformed_json", "bad_tag"]
    with pytest.raises(BadRowError, match=rf"^{path}:2: 1 tokens but 0 tags"):
        list(read_token_jsonl(path))


def test_first_subtoken_carries_the_label(tok):
    # [CLS] the play ##er ##s sat [SEP]: "players" is three sub-tokens, only the first is labelled.
    (feat,) = align_labels(tok, ["The", "players", "sat"], [0, 1, 2])
    assert tok.decode(feat["input_ids"], skip_special_tokens=False).split()[:2] == ["[CLS]", "the"]
    assert feat["labels"] == [IGNORE, 0, 1, IGNORE, IGNORE, 2, IGNORE]
    assert feat["word_ids"] == [-1, 0, 1, 1, 1, 2, -1]
    assert feat["attention_mask"] == [1] * 7


def test_word_windows_hand_worked():
    # Words start at sub-tokens 0, 2, 3, 6, 7 of 9; windows of 4 tokens.
    assert word_windows([0, 2, 3, 6, 7], 9, 4) == [(0, 3), (3, 7), (7, 9)]
    assert word_windows([0, 2, 3, 6, 7], 9, 4, stride=2) == [(0, 3), (2, 6), (6, 9)]
    # A word of 5 sub-tokens in a 3-token window is cut, its first sub-token kept.
    assert word_windows([0, 1, 6], 8, 3, stride=1) == [(0, 1), (1, 4), (6, 8)]
    with pytest.raises(ValueError):
        word_windows([0], 1, 0)


def test_long_sentence_windows_lose_no_word(tok):
    words = ("the players sat on the mat in new york where the cat sat " * 3).split()
    labels = [i % 5 for i in range(len(words))]
    feats = align_labels(tok, words, labels, max_length=10, stride=4)
    assert len(feats) > 3
    seen = set()
    for f in feats:
        assert len(f["input_ids"]) <= 10 and f["input_ids"][0] == 2 and f["input_ids"][-1] == 3
        for wid, lab in zip(f["word_ids"], f["labels"]):
            if lab != IGNORE:
                assert lab == labels[wid]
                seen.add(wid)
    assert seen == set(range(len(words)))
    # Predicting the gold label everywhere, merging the windows gives back each word's label.
    merged = merge_word_predictions([f["word_ids"] for f in feats], [f["labels"] for f in feats], len(words))
    assert merged == labels


def test_merge_prefers_the_window_with_more_context():
    # Word 2 is last in window A (context 0) and in the middle of window B (context 1).
    a, b = [-1, 0, 1, 2, -1], [-1, 1, 2, 3, -1]
    assert merge_word_predictions([a, b], [[0, 5, 5, 7, 0], [0, 5, 9, 5, 0]], 5) == [5, 5, 9, 5, -1]


def test_ner_batch_and_truncating_tokenizer(tok):
    batch = {"tokens": [["the", "cat"], ["new", "york"]], "tags": [["O", "O"], ["B-LOC", "I-LOC"]],
             "row_id": ["f:1", "f:3"]}
    out = tokenize_ner_batch(batch, tok, {"O": 0, "B-LOC": 1, "I-LOC": 2})
    assert out["row_id"] == ["f:1", "f:3"] and out["labels"][1] == [IGNORE, 1, 2, IGNORE]
    from tokenizers import Tokenizer

    cut = Tokenizer.from_str(tok.to_str())
    cut.enable_truncation(4)
    with pytest.raises(ValueError, match="plain_tokenizer"):
        align_labels(cut, ["the", "cat"], [0, 0])
    assert len(align_labels(plain_tokenizer(cut), ["the"] * 6, [0] * 6)[0]["input_ids"]) == 8
    assert cut.truncation is not None  # the caller's tokenizer is left as it was


# ---------------------------------------------------------------- SQuAD

CONTEXT = "Alpha beta gamma delta epsilon zeta eta theta iota kappa"


def squad_json(qas: list[dict], context: str = CONTEXT) -> dict:
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_read_squad_json_v1_and_v2(tmp_path):
    doc = squad_json([{"id": "q1", "question": "What?", "answers": [{"text": "epsilon zeta", "answer_start": 23}]},
                      {"id": "q2", "question": "What?", "answers": [], "is_impossible": True,
                       "plausible_answers": [{"text": "beta", "answer_start": 6}]}])
    path = write(tmp_path / "train.json", json.dumps(doc))
    rows = list(read_squad(path))
    assert rows[0]["answers"] == {"text": ["epsilon zeta"], "answer_start": [23]} and rows[0]["title"] == "T"
    assert rows[0]["row_id"] == f"{path}:q1" and not rows[0]["is_impossible"]
    assert rows[1]["is_impossible"] and rows[1]["answers"] == {"text": [], "answer_start": []}


def test_squad_answer_not_at_its_offset_names_file_and_question(tmp_path):
    doc = squad_json([{"id": "q1", "question": "What?", "answers": [{"text": "epsilon", "answer_start": 22}]},
                      {"id": "q2", "question": "What?", "answers": [{"text": "beta", "answer_start": 6}]}])
    path = write(tmp_path / "dev.json", json.dumps(doc))
    with pytest.raises(BadRowError, match=rf"^{path}:q1: question q1: answer 'epsilon' is not the context"):
        list(read_squad(path))
    rows = list(read_squad(path, on_error="skip"))
    assert [(r["id"], r["reject"]) for r in rows] == [("q1", "bad_answer"), ("q2", "")]
    flat = [{"id": "a", "question": "Q", "context": CONTEXT, "answers": {"text": ["beta"], "answer_start": [6]}},
            {"id": "b", "question": "Q", "context": CONTEXT, "answers": {"text": ["beta"], "answer_start": [7]}}]
    jl = tmp_path / "dev.jsonl.gz"
    jl.write_bytes(gzip.compress("\n".join(json.dumps(x) for x in flat).encode()))
    with pytest.raises(BadRowError, match=rf"^{jl}:2: question b: answer 'beta'"):
        list(read_squad(str(jl)))
    bad = write(tmp_path / "x.json", "[1, 2]")
    with pytest.raises(BadRowError, match=rf"^{bad}:1: not a SQuAD JSON file"):
        list(read_squad(bad))


def test_span_windows_and_answer_tokens_hand_worked():
    assert span_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert span_windows(3, 4, 1) == [(0, 3)]
    with pytest.raises(ValueError, match="stride"):
        span_windows(10, 4, 4)
    offsets = [(0, 5), (6, 10), (11, 16)]
    assert answer_tokens(offsets, 6, 16) == (1, 2)
    assert answer_tokens(offsets, 7, 9) == (1, 1)  # inside one token
    assert answer_tokens(offsets, 17, 20) is None and answer_tokens(offsets[1:], 0, 5) is None


def test_answer_straddling_two_windows_is_found_in_the_next(tok):
    # [CLS] where [SEP] + 5 context tokens + [SEP] = 9; windows (0,5) (3,8) (6,10) of 10 context tokens.
    answers = {"text": ["epsilon zeta"], "answer_start": [CONTEXT.index("epsilon")]}
    feats = qa_features(tok, "where", CONTEXT, answers, max_length=9, stride=2)
    assert [len(f["input_ids"]) for f in feats] == [9, 9, 8]
    assert feats[0]["token_type_ids"] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert feats[0]["offsets"][:4] == [[-1, -1], [-1, -1], [-1, -1], [0, 5]] and feats[0]["offsets"][-1] == [-1, -1]
    # Window 0 holds "epsilon" but not "zeta": not inside, so [CLS]; window 2 holds neither.
    assert [(f["start_positions"], f["end_positions"]) for f in feats] == [(0, 0), (4, 5), (0, 0)]
    f = feats[1]
    s, e = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
    assert CONTEXT[s:e] == "epsilon zeta"  # exactly, from the offsets
    assert qa_features(tok, "where", CONTEXT, {"text": [], "answer_start": []}, 9, 2)[1]["start_positions"] == CLS_INDEX


def test_question_is_cut_not_the_context(tok):
    feats = qa_features(tok, "what is the cat where", CONTEXT, None, max_length=12, stride=1, max_question_tokens=2)
    assert feats[0]["input_ids"][:4] == [2, tok.token_to_id("what"), tok.token_to_id("is"), 3]
    assert "start_positions" not in feats[0]
    covered = {tuple(o) for f in feats for o in f["offsets"] if o[0] >= 0}
    assert len(covered) == 10  # every context token is in some window


def logits_for(feat: dict, start: int, end: int, cls: float = 0.0) -> tuple[list[float], list[float]]:
    s, e = [0.0] * len(feat["input_ids"]), [0.0] * len(feat["input_ids"])
    s[start], e[end] = 5.0, 5.0
    s[0] = e[0] = cls
    return s, e


def test_best_answers_maps_logits_back_to_text(tok):
    feats = qa_features(tok, "where", CONTEXT, None, max_length=9, stride=2)
    feats = [f | {"example_id": "q1"} for f in feats]
    logits = [logits_for(feats[0], 3, 3), logits_for(feats[1], 4, 5), logits_for(feats[2], 3, 3)]
    logits[1][0][4] = 9.0  # window 1's span scores highest
    starts, ends = [lg[0] for lg in logits], [lg[1] for lg in logits]
    assert best_answers(feats, starts, ends, {"q1": CONTEXT}) == {"q1": "epsilon zeta"}
    # One token at most: the two-token span (14) is out; window 0's "Alpha" (10) beats "epsilon"
    # (9 + 0), and comes back as the context spells it.
    assert best_answers(feats, starts, ends, {"q1": CONTEXT}, max_answer_length=1) == {"q1": "Alpha"}
    # v2: [CLS] beats every span in every window -> no answer, unless nulls are not allowed.
    nulls = [logits_for(f, 3, 3, cls=20.0) for f in feats]
    args = (feats, [n[0] for n in nulls], [n[1] for n in nulls], {"q1": CONTEXT})
    assert best_answers(*args, allow_null=True) == {"q1": ""}
    assert best_answers(*args) == {"q1": "Alpha"}


def test_qa_batch_rows_per_window(tok):
    batch = {"id": ["q1", "q2"], "question": ["where", "what"], "context": [CONTEXT, "the cat"],
             "answers": [{"text": ["beta"], "answer_start": [6]}, {"text": ["cat"], "answer_start": [4]}]}
    out = tokenize_qa_batch(batch, tok, max_length=9, stride=2)
    assert out["example_id"] == ["q1", "q1", "q1", "q2"]
    assert out["start_positions"] == [4, 0, 0, 4]


# ---------------------------------------------------------------- NSP


def docs_of(n_docs: int, n_sents: int, rng: random.Random) -> list[list[list[int]]]:
    # Token (d+1)*10000 + s*100 + k: its document and sentence are readable from the id (and it
    # is never CLS = 1 or SEP = 2).
    return [[[(d + 1) * 10000 + s * 100 + k for k in range(rng.randint(2, 9))] for s in range(n_sents)]
            for d in range(n_docs)]


def test_nsp_half_next_half_random_never_self():
    docs = docs_of(80, 30, random.Random(0))
    examples = nsp_examples(docs, block_size=32, cls_id=1, sep_id=2, seed=7)
    assert len(examples) > 500
    share = sum(e["next_sentence_label"] == IS_RANDOM for e in examples) / len(examples)
    assert 0.43 < share < 0.57  # a fair coin: about 3.5 standard deviations either way
    for e in examples:
        ids, types = e["input_ids"], e["token_type_ids"]
        assert len(ids) <= 32 and len(ids) == len(types) and ids[0] == 1 and ids[-1] == 2
        sep = ids.index(2)
        a, b = ids[1:sep], ids[sep + 1:-1]
        assert a and b and types == [0] * (sep + 1) + [1] * (len(b) + 1)
        doc_a, doc_b = {t // 10000 for t in a}, {t // 10000 for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if e["next_sentence_label"] == IS_NEXT:
            assert doc_a == doc_b
            assert max(t // 100 for t in a) < min(t // 100 for t in b)  # B follows A
        else:
            assert doc_a != doc_b


def test_nsp_deterministic_for_a_seed_and_text_input():
    docs = docs_of(5, 8, random.Random(1))
    assert nsp_examples(docs, 24, 1, 2, seed=3) == nsp_examples(docs, 24, 1, 2, seed=3)
    assert nsp_examples(docs, 24, 1, 2, seed=3) != nsp_examples(docs, 24, 1, 2, seed=4)
    text = [["the cat sat", "on the mat"], ["new york", "where is it"]]
    vocab = {w: i + 10 for i, w in enumerate(sorted({w for d in text for s in d for w in s.split()}))}
    out = nsp_examples(text, 16, 1, 2, tokenize=lambda s: [vocab[w] for w in s.split()])
    assert out and all(len(e["input_ids"]) <= 16 for e in out)
    with pytest.raises(ValueError, match="tokenize"):
        nsp_examples(text, 16, 1, 2)
    with pytest.raises(ValueError, match="two non-empty documents"):
        nsp_examples([[[5, 6], [7]], []], 16, 1, 2)


def test_pack_pair_trims_the_longer_side():
    out = pack_pair(list(range(10, 20)), [30, 31], 6, 1, 2, random.Random(0))
    ids = out["input_ids"]
    assert len(ids) == 9 and ids[-3:] == [30, 31, 2] and out["token_type_ids"] == [0] * 6 + [1] * 3


# ---------------------------------------------------------------- parallel text


def test_read_parallel_pairs_and_empty_lines(tmp_path):
    de = write(tmp_path / "train.de", "Ein Hund.\nZwei Katzen.\n\nEin Haus.\n")
    en = write(tmp_path / "train.en", "A dog.\nTwo cats.\nA tree.\n \n")
    rows = list(read_parallel(de, en, on_error="skip"))
    assert rows[0] | {} == {"source": de, "row_id": f"{de}:1", "reject": "", "source_text": "Ein Hund.",
                            "target_text": "A dog."}
    assert [(r["row_id"], r["reject"]) for r in rows[2:]] == [(f"{de}:3", "empty_source"), (f"{de}:4", "empty_target")]
    with pytest.raises(BadRowError, match=rf"^{de}:3: empty source line"):
        list(read_parallel(de, en))
    src = write(tmp_path / "s.de", "a\nb\nc\nd\n")
    with pytest.raises(BadRowError, match=rf"^{src}:4: empty target line \({en}:4\)"):
        list(read_parallel(src, en))


def test_parallel_files_of_different_lengths_are_refused(tmp_path):
    de = write(tmp_path / "train.de", "a\nb\nc\n")
    en = write(tmp_path / "train.en", "a\nb\n")
    # fail: file:line at the first line the shorter file lacks; nothing of the pair is read
    with pytest.raises(BadRowError, match=rf"^{de}:3: parallel files differ in length: {de} has 3 lines, {en} has 2"):
        next(read_parallel(de, en))
    # skip: the whole pair is rejected, every line of the source counted under one reason
    rows = list(read_parallel(de, en, on_error="skip"))
    assert [(r["row_id"], r["reject"], r["source_text"]) for r in rows] == [
        (f"{de}:{i + 1}", "line_count_mismatch", t) for i, t in enumerate("abc")]


def test_seq2seq_jsonl_fields_gzip_and_rejects(tmp_path):
    lines = [{"id": "d0", "document": "#P1#: hi", "summary": "greeting"}, {"document": "x", "summary": ""},
             {"document": "x"}, "{bad"]
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()))
    rows = list(read_seq2seq(str(path), on_error="skip"))
    assert rows[0]["source_text"] == "#P1#: hi" and rows[0]["target_text"] == "greeting"
    assert [r["reject"] for r in rows] == ["", "empty_target", "missing_field", "malformed_json"]
    with pytest.raises(BadRowError, match=rf"^{path}:2: empty target 'summary'"):
        list(read_seq2seq_jsonl(str(path)))
    mt = write(tmp_path / "mt.jsonl", json.dumps({"source": "Hallo", "target": "Hello"}) + "\n")
    assert next(read_seq2seq_jsonl(mt))["target_text"] == "Hello"
    with pytest.raises(UserError, match="parallel file"):
        read_seq2seq(write(tmp_path / "train.de2", "x\n"))


# ---------------------------------------------------------------- metrics


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("  an Apple, a   day ") == "apple day"
    assert squad_scores(["The  Cat!"], [["cat"]]) == {"exact_match": 100.0, "f1": 100.0}
    # pred {black, cat, sat} vs gold {cat, sat, down}: 2 common, P = R = 2/3.
    got = squad_scores(["the black cat sat"], [["cat sat down"]])
    assert got["exact_match"] == 0.0 and got["f1"] == pytest.approx(200 / 3)
    # The max over gold answers, and v2: no gold answer scores only the empty prediction.
    assert squad_scores(["dog"], [["a cat", "the dog"]])["exact_match"] == 100.0
    assert squad_scores(["", "cat"], [[], []]) == {"exact_match": 50.0, "f1": 50.0}


def test_entity_scores_seqeval_semantics():
    refs = [["B-PER", "I-PER", "O", "B-LOC"]]
    got = entity_scores([["B-PER", "I-PER", "O", "B-ORG"]], refs)
    assert (got["precision"], got["recall"], got["f1"]) == (0.5, 0.5, 0.5)
    assert (got["f1_PER"], got["f1_LOC"], got["f1_ORG"]) == (1.0, 0.0, 0.0) and got["accuracy"] == 0.75
    # An I- without B- begins an entity (conlleval): these predictions find both entities.
    assert entity_scores([["I-PER", "I-PER", "O", "I-LOC"]], refs)["f1"] == 1.0
    # A type change ends an entity: B-PER I-LOC is PER(0) + LOC(1), neither is PER(0-1).
    got = entity_scores([["B-PER", "I-LOC"]], [["B-PER", "I-PER"]])
    assert (got["precision"], got["recall"]) == (0.0, 0.0)
    # A wrong boundary is a miss: 1 of 2 predicted right, 1 of 1 gold found.
    got = entity_scores([["B-PER", "O", "B-PER"]], [["B-PER", "O", "O"]])
    assert (got["precision"], got["recall"]) == (0.5, 1.0) and got["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        entity_scores([["O"]], [["O", "O"]])


def test_bleu_and_rouge():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)
    # Several references: the prediction matches the second one.
    assert bleu(["a dog ran in the park today"], [["the cat sat", "a dog ran in the park today"]])["bleu"] == \
        pytest.approx(100.0)
    assert bleu(["xyz uvw"], ["the cat sat on the mat"])["bleu"] == pytest.approx(0.0)
    # pred "the cat sat" vs "the cat sat on the mat": unigrams P 3/3, R 3/6 -> F 2/3;
    # bigrams P 2/2, R 2/5 -> F 4/7; LCS 3 -> ROUGE-L = ROUGE-1.
    got = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert got == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3})
