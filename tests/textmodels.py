"""Tiny Hugging Face models built in the tests (no hub): a 2-layer BERT (hidden size 32) with a WordPiece
tokenizer trained in code with the ``tokenizers`` library, saved with ``save_pretrained``; and an ONNX model
that keeps its weights in an external data file."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = [
    "the fleet serves models from a queue",
    "workers batch requests and reply through redis",
    "a tiny bert reads short texts",
    "good great fine happy",
    "bad awful sad broken",
    "tokens are split into word pieces",
] * 4
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
ENTITIES = {0: "O", 1: "B-THING", 2: "I-THING"}
TEXTS = ["the fleet is great", "bad workers", "a", "tiny bert reads short texts from the queue of requests"]


def tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer trained on CORPUS, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    raw.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip


def bert(directory: Path, task: str) -> tuple[Path, Any, Any]:
    """A seeded random-initialized tiny BERT for ``task`` and its tokenizer saved into ``directory``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel

    tok = tokenizer()
    labels = ENTITIES if task == "token-classification" else LABELS
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    cls = {"text-classification": BertForSequenceClassification, "token-classification": BertForTokenClassification}
    model = cls.get(task, BertModel)(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, model, tok


def tar_gz(directory: Path, archive: Path, *, top: str | None = None) -> Path:
    """``directory``'s files packed into ``archive`` (under the folder ``top`` when given)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory).as_posix()
            tar.add(path, arcname=f"{top}/{relative}" if top else relative, recursive=False)
    return archive


def onnx_with_external_data(directory: Path) -> tuple[Path, np.ndarray[Any, Any]]:
    """``model.onnx`` (y = x @ W, x [-1, 4], W a 4x3 initializer kept in ``weights.bin``) in ``directory``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model, str(directory / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
        location="weights.bin", size_threshold=0,
    )  # fmt: skip
    return directory, w
