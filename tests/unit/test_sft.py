"""sft's pieces without Ray: the chat template's labels, packing with document masking (packed logits equal
each example's alone), too-long rows, and causal-LM document masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylm.datasets._task_io import plain_tokenizer
from raylm.datasets.tokenizers import train_bpe
from raylm.tasks import chat_template as ct
from raylm.tasks.collate import IGNORE
from raylm.tasks.meta import ModelMeta
from raylm.tasks.packing import best_fit_decreasing, document_positions, segment_positions
from raylm.tasks.sft import SFT
from raylm.tasks.sft_data import fit, pack_rows, summary

pytestmark = pytest.mark.unit

CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "It is 4.\n#### 4"},
                {"role": "user", "content": "And the cat?"},
                {"role": "assistant", "content": "It sat on the mat."}]


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    """A byte-level BPE trained here, given ChatML (its two tokens added) as raylm's prepare does."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tok")
    texts = ["The cat sat on the mat. What is 2+2? It is 4. Be brief. And the cat?"] * 20
    train_bpe(texts, root / "base", vocab_size=300, min_frequency=1)
    out = ct.chat_tokenizer(str(root / "base"), "auto", str(root / "chat"))
    tok = AutoTokenizer.from_pretrained(out)
    return tok, plain_tokenizer(tok), out


def test_chatml_tokens_join_the_vocabulary_and_end_a_turn(chat_tok):
    tok, _, out = chat_tok
    assert all(t in tok.get_vocab() for t in ct.CHATML_TOKENS)
    ids = ct.chat_tokens(tok, out)
    assert ids.end_of_turn == "<|im_end|>" and ids.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert ct.chat_tokenizer(out.replace("chat", "base"), "auto", out) == out  # up to date: not rewritten


def test_labels_are_ignored_everywhere_but_the_assistant_tokens(chat_tok):
    tok, backend, _ = chat_tok
    ids, labels = ct.encode_chat(tok, backend, CONVERSATION, "<|im_end|>", "assistant")
    assert len(ids) == len(labels)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    # Exactly the two replies, each through its end-of-turn token; headers, system and user turns untrained.
    assert tok.decode(trained) == "It is 4.\n#### 4<|im_end|>It sat on the mat.<|im_end|>"
    # The hand-built expectation, token by token: the text before the first reply is all -100.
    first = tok.decode(ids[: labels.index(next(lab for lab in labels if lab != IGNORE))])
    assert first.endswith("<|im_start|>assistant\n") and "What is 2+2?" in first

    _, last = ct.encode_chat(tok, backend, CONVERSATION, "<|im_end|>", "last_assistant")
    assert tok.decode([i for i, lab in zip(ids, last) if lab != IGNORE]) == "It sat on the mat.<|im_end|>"
    _, every = ct.encode_chat(tok, backend, CONVERSATION, "<|im_end|>", "all")
    assert every == ids


def test_generation_prompt_ends_with_the_assistant_header(chat_tok):
    tok, backend, _ = chat_tok
    text = tok.decode(ct.prompt_ids(tok, backend, CONVERSATION))
    assert text.endswith("And the cat?<|im_end|>\n<|im_start|>assistant\n") and "It sat" not in text


def test_too_long_rows_are_truncated_or_rejected_and_a_cut_without_targets_is_rejected():
    ids, labels = list(range(10)), [IGNORE] * 6 + [6, 7, 8, 9]
    assert fit(ids, labels, 8, "truncate") == (ids[:8], labels[:8])
    assert fit(ids, labels, 8, "reject") is None
    assert fit(ids, labels, 6, "truncate") is None  # the cut leaves no trained token: too_long
    assert fit(ids, labels, 12, "reject") == (ids, labels)


def test_best_fit_decreasing_places_every_example_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(60, 400, size=500)]
    bins = best_fit_decreasing(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert sum(lengths) / (len(bins) * 512) > 0.9  # a lower bound on this distribution (~0.96 measured)


def _object_column(rows: list) -> np.ndarray:
    """A list column as Ray hands it to collate: an object array of arrays."""
    out = np.empty(len(rows), dtype=object)
    out[:] = [np.array(r) for r in rows]
    return out


def _tiny(kind: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    conf = (LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64) if kind == "llama" else
            GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    return AutoModelForCausalLM.from_config(conf).eval()


def _examples() -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for k, n in enumerate([9, 14, 5, 11, 7]):
        ids = rng.integers(4, 64, size=n).tolist()
        labels = [IGNORE] * (n // 2) + ids[n // 2:]
        out.append({"input_ids": ids, "labels": labels, "row_id": f"f:{k}", "split": "train", "sample_id": k,
                    "truncated": int(k == 1)})
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packed_logits_and_losses_equal_each_example_alone(kind):
    """Document masking is exact: positions restart per example and attention stays inside it."""
    import pyarrow as pa

    from raylm.tasks.sft_data import ROW_SCHEMA

    model, examples = _tiny(kind), _examples()
    packed = pack_rows(pa.Table.from_pylist(examples, schema=ROW_SCHEMA), 24).to_pydict()
    assert sum(len(x) for x in packed["seq_lens"]) == 5 and max(map(len, packed["input_ids"])) <= 24
    assert sum(packed["truncated"]) == 1  # carried into the packed rows, counted in the manifest
    meta = ModelMeta(vocab_size=64, eos_id=0, pad_id=1, block_size=24, max_length=24)
    raw = {k: _object_column(v) for k, v in packed.items() if k not in ("sample_id", "split", "truncated")}
    batch = SFT().collate(raw | {"sample_id": np.array(packed["sample_id"])}, meta, 0)
    assert "attention_mask" not in batch
    by_id = {e["row_id"]: e for e in examples}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for r, (lens, rows) in enumerate(zip(packed["seq_lens"], packed["row_ids"])):
            at = 0
            for n, rid in zip(lens, rows):
                alone_ids = torch.tensor([by_id[rid]["input_ids"]])
                alone = model(input_ids=alone_ids).logits[0]
                torch.testing.assert_close(logits[r, at:at + n], alone, atol=1e-5, rtol=1e-5)
                # the example's loss in the packed row (its own targets) equals its loss alone
                lab = torch.tensor([by_id[rid]["labels"]])
                solo = model(input_ids=alone_ids, labels=lab).loss
                seg = batch["labels"][r, at + 1:at + n]
                packed_loss = torch.nn.functional.cross_entropy(logits[r, at:at + n - 1], seg, ignore_index=IGNORE)
                torch.testing.assert_close(packed_loss, solo, atol=1e-5, rtol=1e-5)
                at += n
        # and the batch's loss is the mean over every example's targets (none predicted across a boundary)
        full = SFT().loss(model, batch)  # the training loss goes through the same masking
        expect = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), batch["labels"][:, 1:].reshape(-1),
                                                   ignore_index=IGNORE)
    torch.testing.assert_close(full, expect, atol=1e-5, rtol=1e-5)
    assert int(batch["_n"]) == sum(sum(1 for t in e["labels"][1:] if t != IGNORE) for e in examples)


def test_unpacked_batch_pads_labels_with_ignore_and_counts_targets():
    meta = ModelMeta(vocab_size=64, eos_id=0, pad_id=1, block_size=24, max_length=24)
    ex = _examples()[:2]
    raw = {"input_ids": _object_column([e["input_ids"] for e in ex]),
           "labels": _object_column([e["labels"] for e in ex]), "sample_id": np.arange(2)}
    b = SFT().collate(raw, meta, 0)
    assert b["input_ids"].shape == (2, 14) and b["attention_mask"][0].sum() == 9
    assert (b["labels"][0, 9:] == IGNORE).all() and int(b["_n"]) == 5 + 7


def test_document_positions_restart_after_each_eos():
    ids = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 4]])
    assert document_positions(ids, 0).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    assert segment_positions([3, 2], 7).tolist() == [0, 1, 2, 0, 1, 0, 1]


def test_causal_lm_document_masking_gives_each_document_its_own_logits():
    from raylm.tasks.corpus import CausalLM

    model = _tiny("llama")
    docs = [[5, 9, 12, 0], [7, 7, 30, 41, 0], [3, 8]]  # a block cut mid-document at its end
    block = np.array([[t for d in docs for t in d]])
    meta = ModelMeta(vocab_size=64, eos_id=0, pad_id=1, block_size=11, max_length=11, extra={"document_masking": True})
    b = CausalLM().collate({"input_ids": block, "sample_id": np.arange(1)}, meta, 0)
    assert b["labels"][0].tolist()[4] == IGNORE and b["labels"][0].tolist()[9] == IGNORE
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]
        at = 0
        for d in docs:
            torch.testing.assert_close(logits[at:at + len(d)], model(input_ids=torch.tensor([d])).logits[0],
                                       atol=1e-5, rtol=1e-5)
            at += len(d)


def test_summary_reports_trained_share_and_packing_efficiency():
    manifest = {"max_length": 100, "splits": {"train": {"tokens_out": 950, "examples": 40, "rows": 10,
                                                        "trained_tokens": 380, "longest_example": 90}}}
    s = summary(manifest)["train"]
    assert s["trained_share"] == 0.4 and s["row_efficiency"] == 0.95
    assert s["padded_to_max_length_efficiency"] == round(950 / 4000, 4)


def test_a_tokenizers_own_template_is_used_and_its_end_of_turn_found(tmp_path, chat_tok):
    """`auto` keeps a tokenizer's template (here a Llama-3-like one with its own end-of-turn token); a Jinja file
    given by path replaces it."""
    from transformers import AutoTokenizer

    tok, _, chat_dir = chat_tok
    base = tmp_path / "own"
    own = AutoTokenizer.from_pretrained(chat_dir.replace("chat", "base"))
    own.add_special_tokens({"additional_special_tokens": ["<|eot|>", "<|hdr|>"]})
    own.chat_template = ("{% for m in messages %}<|hdr|>{{ m['role'] }}: {{ m['content'] }}<|eot|>{% endfor %}"
                         "{% if add_generation_prompt %}<|hdr|>assistant: {% endif %}")
    own.save_pretrained(base)
    out = ct.chat_tokenizer(str(base), "auto", str(tmp_path / "chat"))
    t = AutoTokenizer.from_pretrained(out)
    assert t.chat_template == own.chat_template and ct.chat_tokens(t, out).end_of_turn == "<|eot|>"
    assert len(t) == len(own)  # nothing added: the template's tokens are the tokenizer's
    ids, labels = ct.encode_chat(t, plain_tokenizer(t), CONVERSATION[1:3], "<|eot|>", "assistant")
    # the header ends with a space that byte-level BPE joins to the reply's first token: " It" is trained
    assert t.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == " It is 4.\n#### 4<|eot|>"

    jinja = tmp_path / "plain.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                     "{% if add_generation_prompt %}[assistant] {% endif %}")
    out2 = ct.chat_tokenizer(str(base), str(jinja), str(tmp_path / "chat2"))
    t2 = AutoTokenizer.from_pretrained(out2)
    assert t2.chat_template == jinja.read_text() and ct.chat_tokens(t2, out2).end_of_turn == t2.eos_token
    with pytest.raises(Exception, match="neither auto, chatml nor a Jinja file"):
        ct.chat_tokenizer(str(base), str(tmp_path / "missing.jinja"), str(tmp_path / "chat3"))


def test_prepare_prints_what_sft_shards_train_on(capsys):
    from raylm.datasets.report import print_manifest

    manifest = {"max_length": 100, "rows_in": 40, "rows_kept": 40, "rows_rejected": 0, "rejected": {},
                "splits": {"train": {"tokens_out": 950, "examples": 40, "rows": 10, "trained_tokens": 380,
                                     "truncated": 3, "longest_example": 100, "files": [{}], "docs": 40,
                                     "dropped": 0}}}
    manifest["sft_summary"] = summary(manifest)
    print_manifest(manifest, "prep")
    out = capsys.readouterr().out
    assert "40 examples, 3 truncated, 40.0% of tokens trained, rows 95.0% full (padding to max_length: 23.8%)" in out
