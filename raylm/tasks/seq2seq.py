"""seq2seq (`trainer.task: seq2seq`): translation and summarization on an encoder-decoder.

Models: BART, T5 or Marian built from `model` (n_layer layers each side, shared embeddings over the
joint tokenizer), a raylm/HF seq2seq export (`model.init_from` with `is_encoder_decoder`), or an
`EncoderDecoderModel` warm-started from a pretrained encoder used as encoder and as decoder
(`model.init_from` a BERT-style encoder such as all-MiniLM-L6-v2; the decoder's cross-attention is new;
Rothe et al. 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks").

Training: teacher forcing. Batches are padded to their longest source and target; labels are -100 on
padding and the model shifts them right behind `decoder_start_token_id` (EOS for BART, PAD for T5 and
Marian, [CLS] for a BERT encoder-decoder), as HF's Seq2SeqTrainer feeds them.

Validation: the loss over `trainer.eval.batches`, and beam search (`trainer.generation`) over the first
`generation.eval_batches` of them, decoded on every rank and gathered once: sacreBLEU (val_bleu) and
ROUGE-1/2/L F (val_rouge1/2/L) against the raw references. `data.seq2seq.metric` says which one is the
task's metric (checkpoint ranking, sweeps). The exported model carries the decoding settings in its
generation_config.json and the data settings in config.json (`raylm_seq2seq`), which `raylm predict`,
`raylm eval --input` and `raylm generate` read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from raylm.config import RootConfig
from raylm.datasets._task_io import numbered_lines, parse_json_object, plain_tokenizer
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import refuse_malformed
from raylm.errors import UserError
from raylm.tasks import seq2seq_data as seq2seq_prepare
from raylm.tasks.base import GenerateOptions, LabelledTask
from raylm.tasks.collate import IGNORE, pad
from raylm.tasks.meta import ModelMeta
from raylm.tasks.metrics import bleu, rouge
from raylm.tasks.parallel_text import SOURCE_FIELDS
from raylm.tasks.seq2seq_data import PairFormat, check_files, encode, read_rows
from raylm.trainers.parallel import gather
from raylm.trainers.state import unwrap

ARCHS = ("bart", "t5", "marian")


# ---------------------------------------------------------------- models


def model_config(cfg: RootConfig, meta: ModelMeta) -> Any:
    """A BART, T5 or Marian config from `model`, sized for the prepared data and its tokenizer."""
    from transformers import BartConfig, MarianConfig, T5Config

    m, ids = cfg.model, special_ids(meta, cfg.model.arch)
    common = {"vocab_size": meta.vocab_size, "pad_token_id": ids["pad"], "eos_token_id": ids["eos"],
              "decoder_start_token_id": ids["start"], "tie_word_embeddings": True}
    if m.arch == "t5":
        return T5Config(d_model=m.n_embd, d_kv=m.n_embd // m.n_head, d_ff=4 * m.n_embd, num_layers=m.n_layer,
                        num_heads=m.n_head, dropout_rate=m.dropout, **common)
    cls = MarianConfig if m.arch == "marian" else BartConfig
    return cls(d_model=m.n_embd, encoder_layers=m.n_layer, decoder_layers=m.n_layer, encoder_attention_heads=m.n_head,
               decoder_attention_heads=m.n_head, encoder_ffn_dim=4 * m.n_embd, decoder_ffn_dim=4 * m.n_embd,
               # positions for the longest source, target and generated output (decoder start included)
               max_position_embeddings=max(meta.max_length, cfg.trainer.generation.max_new_tokens + 1),
               dropout=m.dropout, attention_dropout=m.dropout,
               forced_eos_token_id=None, scale_embedding=m.arch == "marian",
               **({"bos_token_id": ids["eos"]} if cls is BartConfig else {}), **common)


def special_ids(meta: ModelMeta, arch: str) -> dict[str, int]:
    """pad, eos and the decoder's start token: EOS for BART (its convention), PAD for T5 and Marian,
    [CLS] (else PAD) for an encoder-decoder warm-started from BERT (`arch` "encoder-decoder")."""
    s = meta.extra.get("seq2seq") or {}
    pad_id, eos, bos = meta.pad_id, s.get("eos_id", meta.eos_id), meta.extra.get("bos_id")
    start = {"bart": eos, "encoder-decoder": bos if bos is not None else pad_id}
    return {"pad": pad_id, "eos": eos, "start": start.get(arch, pad_id)}


def generation_config(model: Any, gen: dict) -> Any:
    """The decoding defaults (`trainer.generation`) with the model's special ids."""
    from transformers import GenerationConfig

    c = model.config
    return GenerationConfig(num_beams=gen["num_beams"], length_penalty=gen["length_penalty"],
                            max_new_tokens=gen["max_new_tokens"], early_stopping=gen["num_beams"] > 1,
                            decoder_start_token_id=c.decoder_start_token_id, pad_token_id=c.pad_token_id,
                            eos_token_id=c.eos_token_id, bos_token_id=getattr(c, "bos_token_id", None))


def warm_started(init_from: str, meta: ModelMeta) -> Any:
    """An EncoderDecoderModel whose encoder and decoder both start from the encoder at `init_from`."""
    from transformers import EncoderDecoderModel

    model = EncoderDecoderModel.from_encoder_decoder_pretrained(init_from, init_from)
    ids = special_ids(meta, "encoder-decoder")
    for c in (model.config, model.config.decoder):
        c.pad_token_id, c.eos_token_id, c.decoder_start_token_id = ids["pad"], ids["eos"], ids["start"]
    # The encoder's pooler runs but feeds no loss: frozen, or DDP waits for its gradients forever.
    for p in getattr(getattr(model.encoder, "pooler", None), "parameters", list)():
        p.requires_grad_(False)
    return model


def is_encoder_decoder(path: str) -> bool:
    with open(os.path.join(path, "config.json")) as f:
        return bool(json.load(f).get("is_encoder_decoder"))


class Seq2Seq(LabelledTask):
    """Translation and summarization: teacher-forced cross-entropy, beam search, BLEU/ROUGE."""

    name = "seq2seq"
    labelled_format = PairFormat()
    group_by_length = True
    model_keys = ("input_ids", "attention_mask", "labels")
    meta_keys = ("seq2seq", "bos_id")

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        if cfg.model.init_from or cfg.model.arch in ARCHS:
            return []
        return [f"trainer.task=seq2seq builds an encoder-decoder: set model.arch to one of {', '.join(ARCHS)} "
                f"(got {cfg.model.arch}), or model.init_from to a seq2seq model or a pretrained encoder"]

    def check_inputs(self, cfg: RootConfig) -> list[str]:
        """Each source file has its parallel partner (or is JSONL)."""
        return check_files(cfg.data)

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        return evaluate_file(model_dir, path)

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        return predict_file(model_dir, path, output, batch_size or 16)

    def generate(self, model_dir: str, prompt: str, options: GenerateOptions) -> str:
        """The translation/summary of `prompt` (beam search; unset options: the model's generation_config)."""
        return generate_text(model_dir, prompt, options.num_beams, options.length_penalty, options.max_new_tokens)

    def extra_meta(self, cfg: RootConfig, manifest: dict) -> dict:
        """The tokenizer (workers decode outputs to text and may not see the driver's files) and the decoding."""
        with open(os.path.join(manifest["tokenizer_dir"], "tokenizer.json")) as f:
            return {"tokenizer_json": f.read(), "generation": cfg.trainer.generation.model_dump()}

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        from transformers import AutoModelForSeq2SeqLM

        m = cfg.model
        if m.init_from and is_encoder_decoder(m.init_from):
            model = AutoModelForSeq2SeqLM.from_pretrained(m.init_from, attn_implementation=m.attn_implementation)
        elif m.init_from:
            model = warm_started(m.init_from, meta)
        elif m.arch in ARCHS:
            conf = model_config(cfg, meta)
            conf._attn_implementation = m.attn_implementation
            model = AutoModelForSeq2SeqLM.from_config(conf)
        else:
            raise UserError(self.check_config(cfg))
        model.generation_config = generation_config(model, cfg.trainer.generation.model_dump())
        model.config.raylm_seq2seq = meta.extra.get("seq2seq")  # how predict/eval read files, kept with the export
        return model

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        ids = pad(batch["input_ids"], meta.pad_id)
        labels = pad(batch["labels"], IGNORE)  # the target's padding is no target
        out = {"input_ids": ids, "attention_mask": pad([np.ones(len(r)) for r in batch["input_ids"]], 0),
               "labels": labels, "sample_id": torch.from_numpy(np.array(batch["sample_id"])),
               "_n": labels.ne(IGNORE).sum()}
        if "target_text" in batch:  # validation: the raw references, as bytes (0 pads; UTF-8 text has none)
            out["_ref"] = pad([np.frombuffer(t.encode("utf-8"), np.uint8) for t in batch["target_text"]], 0)
        return out

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: inputs[k] for k in self.model_keys}).loss

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        return self.loss(model, inputs), None

    def fake_raw_batch(self, meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """A full-length raw training batch (the batch_size=auto probe on a GPU)."""
        s = meta.extra.get("seq2seq") or {}

        def rows(n: int) -> np.ndarray:
            out = np.empty(b, dtype=object)
            out[:] = [np.full(n, 5, np.int32) for _ in range(b)]
            return out

        return {"input_ids": rows(s.get("max_source_length") or seq_len),
                "labels": rows(s.get("max_target_length") or seq_len), "sample_id": np.arange(b)}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: list, device: torch.device, amp: torch.dtype | None,
                 meta: ModelMeta) -> dict[str, float]:
        """Loss over every batch; BLEU and ROUGE of beam search over the first generation.eval_batches."""
        from tokenizers import Tokenizer


        model.eval()
        core, tok = unwrap(model), Tokenizer.from_str(meta.extra["tokenizer_json"])
        n_decode = (meta.extra.get("generation") or {}).get("eval_batches", 4)
        loss_sum, n, hyps, refs = 0.0, 0, [], []
        for k, b in enumerate(batches):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = self.loss(model, b.inputs)
                if k < n_decode and "_ref" in b.inputs:
                    out = _generate(model, core, b.inputs)
                    if b.counts:
                        hyps += decode(tok, out.tolist())
                        refs += [_text(r) for r in b.inputs["_ref"].cpu()]
            if b.counts:  # a filler only keeps the ranks' forward passes (and generate's steps) equal
                loss_sum, n = loss_sum + float(loss) * b.n, n + b.n  # host sync per batch: eval only
        parts = gather((loss_sum, n, hyps, refs))
        hyps, refs = [h for p in parts for h in p[2]], [r for p in parts for r in p[3]]
        out = {"val_loss": sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)}
        if refs:
            out |= {f"val_{k}": v for k, v in text_scores(hyps, refs).items()}
        return out


def _generate(model: torch.nn.Module, core: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Beam search with the model's decoding settings. Under FSDP, generate calls the encoder and the decoder
    directly, past the root module's forward whose hook gathers the root's own parameters (the shared
    embeddings, the lm head): they are gathered around the call instead, and every rank runs as many
    decoder steps as the slowest (synced_gpus)."""
    sharded = _sharded(model)
    if sharded:
        model.unshard()
    try:
        return core.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                             generation_config=core.generation_config, synced_gpus=sharded)
    finally:
        if sharded:
            model.reshard()


def _sharded(model: torch.nn.Module) -> bool:
    """FSDP: every rank must run as many forwards as the others (generate's synced_gpus)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # older torch
        return False
    return isinstance(model, FSDPModule)


def _text(raw: torch.Tensor) -> str:
    return bytes(raw[raw.ne(0)].tolist()).decode("utf-8")


def decode(tok: Any, rows: list[list[int]]) -> list[str]:
    """Generated ids -> text (special tokens dropped: the decoder's start, EOS, padding)."""
    return [t.strip() for t in tok.decode_batch(rows, skip_special_tokens=True)]


def text_scores(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """sacreBLEU (bleu, in [0, 100]) and ROUGE-1/2/L F (rouge1, rouge2, rougeL, in [0, 1]); the outputs' count."""

    return {"bleu": bleu(hyps, refs)["bleu"], **rouge(hyps, refs), "decoded": float(len(hyps))}


# ---------------------------------------------------------------- predict / eval / generate on an export


def load(model_dir: str) -> tuple[Any, Any, dict]:
    """(model in eval mode, plain tokenizer, the data settings it was trained with)."""
    import transformers


    conf = transformers.AutoConfig.from_pretrained(model_dir)
    if getattr(conf, "model_type", "") == "encoder-decoder":
        model = transformers.EncoderDecoderModel.from_pretrained(model_dir)
    else:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    tok = plain_tokenizer(transformers.AutoTokenizer.from_pretrained(model_dir))
    return model.eval(), tok, dict(getattr(conf, "raylm_seq2seq", None) or {})


def _settings(model_dir: str, model: Any, settings: dict) -> dict:
    """The ids around a source and its longest length, as in training."""

    conf = getattr(model.config, "encoder", model.config)
    limit = settings.get("max_source_length") or getattr(conf, "max_position_embeddings", None) or 512
    return {"ids": seq2seq_prepare.special_ids(model_dir), "max_source": limit}


@torch.no_grad()
def generate_texts(model: Any, tok: Any, sources: list[str], ids: dict, max_source: int, batch_size: int = 16,
                   **decoding: Any) -> list[str]:
    """Beam search over `sources` (encoded as in training), in batches of similar length; outputs in input order.

    `decoding` overrides the model's generation_config (num_beams, length_penalty, max_new_tokens)."""
    encoded = [encode(tok, s, max_source, ids["bos_id"], ids["eos_id"]) for s in sources]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
    out: list[str] = [""] * len(encoded)
    overrides = {k: v for k, v in decoding.items() if v is not None}
    conf = getattr(model.config, "decoder", model.config)
    limit = getattr(conf, "max_position_embeddings", None)  # learned positions: no output past them
    asked = overrides.get("max_new_tokens", model.generation_config.max_new_tokens)
    if limit and asked and asked >= limit:
        overrides["max_new_tokens"] = limit - 1
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [encoded[i] for i in chunk]
        gen = model.generate(input_ids=pad(rows, ids["pad_id"]), attention_mask=pad([[1] * len(r) for r in rows], 0),
                             generation_config=model.generation_config, **overrides)
        for i, text in zip(chunk, decode(tok, gen.tolist())):
            out[i] = text
    return out


def _source_rows(path: str, settings: dict) -> Iterator[dict]:
    """Rows to translate/summarize: JSONL objects with a source field, or plain text, one source a line."""
    jsonl = re.sub(r"\.(gz|zst|zstd)$", "", path).endswith((".jsonl", ".json", ".ndjson"))
    names = [settings["source_field"]] if settings.get("source_field") else list(SOURCE_FIELDS)
    for no, line in numbered_lines(path):
        if not line.strip():
            continue
        if not jsonl:
            yield {"id": f"{path}:{no}", "source_text": line}
            continue
        obj = parse_json_object(line, f"{path}:{no}")
        src = next((obj[k] for k in names if isinstance(obj.get(k), str)), None)
        if src is None:
            raise UserError(f"{path}:{no}: no source text (a string field {' or '.join(map(repr, names))})")
        yield {"id": str(obj.get("id", f"{path}:{no}")), "source_text": src}


def predict_file(model_dir: str, input_path: str, output_path: str, batch_size: int = 16) -> dict:
    """One JSON line `{id, source, prediction}` per source (JSONL or plain text)."""
    model, tok, settings = load(model_dir)
    rows = list(_source_rows(input_path, settings))
    if not rows:
        raise UserError(f"{input_path}: no source text to translate or summarize")
    s = _settings(model_dir, model, settings)
    preds = generate_texts(model, tok, [r["source_text"] for r in rows], s["ids"], s["max_source"], batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w") as f:
        f.writelines(json.dumps({"id": r["id"], "source": r["source_text"], "prediction": p}, ensure_ascii=False) + "\n"
                     for r, p in zip(rows, preds))
    return {"task": "seq2seq", "rows": len(rows), "output": output_path}


def evaluate_file(model_dir: str, input_path: str, batch_size: int = 16) -> dict:
    """BLEU and ROUGE of the model's outputs on a labelled file, read as `raylm prepare` reads it: a source
    file whose parallel partner sits beside it (the suffixes the model was trained with), or JSONL."""

    model, tok, settings = load(model_dir)
    keep = ("source_suffix", "target_suffix", "source_field", "target_field")
    if re.sub(r"\.(gz|zst|zstd)$", "", input_path).endswith((".jsonl", ".json", ".ndjson")):
        keep = keep[2:]  # JSONL pairs, whatever the training files were
    cfg = DataConfig(on_error="skip", seq2seq={k: settings.get(k) for k in keep})
    read = refuse_malformed(list(read_rows(input_path, cfg, "skip")),
                            hint="fix the line: JSONL {source|document, target|summary}, or parallel text files")
    rows = [r for r in read if not r["reject"]]
    if not rows:
        raise UserError(f"{input_path}: no source/target pair to evaluate ({len(read)} read, all rejected)",
                        hint="JSONL {source|document, target|summary}, or a source file with its parallel file")
    s = _settings(model_dir, model, settings)
    preds = generate_texts(model, tok, [r["source_text"] for r in rows], s["ids"], s["max_source"], batch_size)
    return {"task": "seq2seq", "examples": len(rows), "rejected": len(read) - len(rows),
            **text_scores(preds, [r["target_text"] for r in rows])}


def generate_text(model_dir: str, prompt: str, num_beams: int | None = None, length_penalty: float | None = None,
                  max_new_tokens: int | None = None) -> str:
    """`raylm generate` on a seq2seq export: the translation/summary of `prompt` (beam search)."""
    model, tok, settings = load(model_dir)
    s = _settings(model_dir, model, settings)
    return generate_texts(model, tok, [prompt], s["ids"], s["max_source"], 1, num_beams=num_beams,
                          length_penalty=length_penalty, max_new_tokens=max_new_tokens)[0]
